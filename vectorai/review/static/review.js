// The grid's keyboard path and the slider's read-out. Corrections are POSTed with the page's
// CSRF token; without this script the class buttons post the same form and reload the page.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const csrf = document.body.dataset.csrf;
  const slider = document.getElementById("below");
  const shown = document.getElementById("below-value");
  if (slider && shown) {
    slider.addEventListener("input", () => {
      shown.textContent = Number(slider.value) >= 1 ? "any" : Number(slider.value).toFixed(2);
    });
  }
  const cards = Array.from(document.querySelectorAll(".card"));
  if (!cards.length) return;

  async function review(card, label) {
    const form = card.querySelector("form.review");
    const body = new URLSearchParams(new FormData(form));
    body.set("label", String(label));
    const response = await fetch(form.action, {
      method: "POST", body, credentials: "same-origin",
      headers: {"X-CSRF-Token": csrf, "X-Requested-With": "fetch"},
    });
    const answer = await response.json();
    const state = card.querySelector(".review-state");
    if (!response.ok) {
      state.textContent = answer.error || "not saved";
      state.classList.add("error");
      return false;
    }
    state.classList.remove("error");
    state.textContent = `reviewed ${answer.label} ${answer.label_name}`;
    card.classList.add("reviewed");
    card.dataset.reviewed = String(answer.label);
    return true;
  }

  cards.forEach((card, i) => {
    card.querySelectorAll("form.review button").forEach((button) => {
      button.addEventListener("click", async (event) => {
        event.preventDefault();
        await review(card, button.value);
      });
    });
    card.addEventListener("keydown", async (event) => {
      if (event.target !== card) return;
      if (/^[0-9]$/.test(event.key) && !event.ctrlKey && !event.metaKey && !event.altKey) {
        event.preventDefault();
        if (!card.querySelector(`form.review button[value="${event.key}"]`)) return;
        if (await review(card, Number(event.key)) && cards[i + 1]) cards[i + 1].focus();
      } else if (event.key === "ArrowRight" && cards[i + 1]) {
        cards[i + 1].focus();
      } else if (event.key === "ArrowLeft" && cards[i - 1]) {
        cards[i - 1].focus();
      }
    });
  });
  cards[0].focus();
});
