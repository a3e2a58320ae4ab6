"""The throughput benchmark's measured lines and the tables it prints: the digits cases, the photos
case and the core-scaling table."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from benchmarks.inputs import PHOTO_MODEL_SIDE, PHOTO_SIZE

RAW = "raw onnxruntime"


@dataclass
class Case:
    """One measured line of the table."""

    case: str
    kind: str
    images: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self, raw_rate: float) -> dict[str, Any]:
        beside = self.extra.get("ceiling_beside_images_per_second")
        return {"case": self.case, "kind": self.kind, "images": self.images,
                "seconds": round(self.seconds, 4), "images_per_second": round(self.rate, 1),
                "ratio_to_raw_onnxruntime": round(self.rate / raw_rate, 4) if raw_rate else None,
                **({"ratio_to_ceiling_beside": round(self.rate / beside, 4)} if beside else {}),
                **self.extra}


def target(result: dict[str, Any] | None, ratio: float) -> bool | None:
    """Met when the case reaches ``ratio`` of the ceiling measured beside it."""
    return None if result is None else result["ratio_to_ceiling_beside"] >= ratio


def _table(rows: Sequence[Sequence[str]], first_left: bool) -> list[str]:
    """Columns padded to their widest cell (right-aligned; the first left-aligned when
    ``first_left``), a rule under the header row."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(cell.ljust(widths[0]) if i == 0 and first_left else cell.rjust(widths[i])
                        for i, cell in enumerate(row)) for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return lines


def format_table(summary: dict[str, Any]) -> str:
    """The digits cases: one row a case, then memory, the --baseline-model comparison, what was
    skipped and the targets."""
    rows = [("case", "images", "images/s", "x raw ORT", "x beside")]
    for r in summary["results"]:
        rows.append((r["case"], f"{r['images']:,}", f"{r['images_per_second']:,.1f}",
                     f"{r['ratio_to_raw_onnxruntime']:.3f}",
                     f"{r['ratio_to_ceiling_beside']:.3f}" if "ratio_to_ceiling_beside" in r else ""))
    lines = _table(rows, first_left=True)
    lines.append("")
    lines.extend(_memory_lines(summary["memory"]))
    if "baseline_model" in summary:
        lines.append(_baseline_line(summary["baseline_model"]))
    lines.extend(f"skipped {name}: {reason}" for name, reason in summary["skipped"].items())
    by_name = {r["case"]: r for r in summary["results"]}
    for name, met in summary["targets"].items():
        line = f"target {name}: {'met' if met else 'not measured' if met is None else 'NOT met'}"
        case = by_name.get("predict " + name.split(" >=")[0])
        if case is not None and "ratio_to_ceiling_beside" in case:
            line += (f" ({case['ratio_to_ceiling_beside']:.3f} of the ceiling beside it, "
                     f"{case['ratio_to_raw_onnxruntime']:.3f} of the run's highest)")
        lines.append(line)
    return "\n".join(lines)


def _baseline_line(compared: dict[str, Any]) -> str:
    return (f"{RAW}, this model vs --baseline-model {compared['baseline']}: "
            f"{compared['images_per_second']:,.1f} vs {compared['baseline_images_per_second']:,.1f} images/s, "
            f"ratio {compared['ratio']:.3f} (best of {compared['passes']} alternating passes each)")


def _memory_lines(memory: dict[str, Any]) -> list[str]:
    large, noise = memory["large"], memory["bytes"]
    return [
        "peak memory (local+sqlite): " + ", ".join(
            f"{r['messages']:,} messages {r['peak_rss_mib']:.1f} MiB" for r in memory["runs"])
        + f" (growth {memory['growth']:+.1%})",
        f"peak memory, {large['messages']:,} {large['side']}x{large['side']} RGBA PNGs of "
        f"{large['bytes_each'] // 1024} KiB in batches of {large['batch_size']}: {large['peak_rss_mib']:.1f} MiB "
        f"({large['predicted']} predicted, {large['dead_letters']} dead letters, {large['seconds']} s)",
        f"peak memory, {noise['messages']:,} noise PNGs of {noise['bytes_each'] / 2**20:.2f} MiB, "
        f"max_batch_bytes {noise['max_batch_bytes'] >> 20} MiB: {noise['peak_rss_mib']:.1f} MiB "
        f"({noise['predicted']} predicted, {noise['seconds']} s)",
    ]


def format_photos(photos: dict[str, Any]) -> str:
    lines = [f"photos ({photos['images']:,} {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} JPEGs, MobileNetV2-sized model at "
             f"{PHOTO_MODEL_SIDE}x{PHOTO_MODEL_SIDE}, batch {photos['batch_size']}, {photos['cpus']} CPUs, "
             f"{photos['decode_threads']} decode threads): "
             f"{photos['images_per_second']:,.1f} images/s (best of {len(photos['runs'])} runs), "
             f"{photos['ratio_to_ceiling_beside']:.3f} of the ceiling beside it "
             f"({photos['ceiling_beside_images_per_second']:,.1f}; median run "
             f"{photos['median_ratio_to_ceiling_beside']:.3f}); CPU "
             f"{photos['cpu_seconds_per_1000_images']} s per 1,000 images; peak RSS {photos['peak_rss_mib']} MiB",
             f"photos: decode+preprocess CPU per photo {photos['decode_cpu_ms_per_photo']['jpeg_draft']} ms with JPEG "
             f"draft, {photos['decode_cpu_ms_per_photo']['full_decode']} ms decoding in full"]
    if "draft_agreement" in photos:
        check = photos["draft_agreement"]
        lines.append(f"photos: JPEG draft vs full decoding on {check['images']:,} digits upscaled to 640x480: top-1 "
                     f"agreement {check['agreement']:.2%} (accuracy {check['accuracy_draft']:.2%} vs "
                     f"{check['accuracy_full']:.2%})")
    lines.extend(f"target photos {name}: {'met' if met else 'NOT met'}" for name, met in photos["targets"].items())
    return "\n".join(lines)


def format_scaling(scaling: dict[str, Any]) -> str:
    rows = [("cores", "images/s", "raw ORT beside", "x beside", "vs 1 core", "ceiling vs 1 core", "CPU s/1000",
             "peak RSS MiB", "decode threads")]
    first = scaling["rows"][0] if scaling["rows"] else None
    for row in scaling["rows"]:
        rows.append((str(row["cores"]), f"{row['images_per_second']:,.1f}",
                     f"{row['ceiling_beside_images_per_second']:,.1f}", f"{row['ratio_to_ceiling_beside']:.3f}",
                     f"{row['images_per_second'] / first['images_per_second']:.2f}",
                     f"{row['ceiling_beside_images_per_second'] / first['ceiling_beside_images_per_second']:.2f}",
                     f"{row['cpu_seconds_per_1000_images']:.2f}", f"{row['peak_rss_mib']:.1f}",
                     str(row["decode_threads"])))
    lines = _table(rows, first_left=False)
    return f"photos scaling ({scaling['images']:,} JPEGs, batch {scaling['batch_size']}, taskset):\n" + "\n".join(lines)
