/* Pillow's antialiased resize of 8-bit images, the same pixels in a fraction of the CPU.
 *
 * Why: resizing a photo (320x240 after JPEG draft decoding) to a model's 224x224 took as much
 * CPU as decoding it. Pillow computes every output pixel as its own short dot product, in
 * scalar C, in both passes. Here the coefficients and the integer arithmetic are Pillow's
 * (Resample.c: the same filters, 22-bit fixed point, rounding and clipping), so the result is
 * bit for bit the same, but each pass combines whole lines of pixels with one coefficient at a
 * time, which the compiler turns into vector instructions:
 *   - the vertical pass adds rows of the image, weighted;
 *   - the horizontal pass does the same on the image turned on its side (columns as rows),
 *     and turns the result back.
 * vectorai.resize is the way in: it checks its arguments, picks the pass order for the installed
 * Pillow, and checks this module against that Pillow once before using it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define PRECISION_BITS (32 - 8 - 2)

typedef struct {
    double (*weight)(double x);
    double support;
} Filter;

static double box_weight(double x) { return (x > -0.5 && x <= 0.5) ? 1.0 : 0.0; }

static double triangle_weight(double x) {
    x = x < 0.0 ? -x : x;
    return x < 1.0 ? 1.0 - x : 0.0;
}

static double hamming_weight(double x) {
    x = x < 0.0 ? -x : x;
    if (x == 0.0) return 1.0;
    if (x >= 1.0) return 0.0;
    x = x * M_PI;
    /* Pillow's constants are floats: (double)0.54f, not 0.54. */
    return sin(x) / x * (0.54f + 0.46f * cos(x));
}

static double cubic_weight(double x) {
    const double a = -0.5;
    x = x < 0.0 ? -x : x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

static double sinc(double x) {
    if (x == 0.0) return 1.0;
    x = x * M_PI;
    return sin(x) / x;
}

static double lanczos_weight(double x) {
    return (-3.0 <= x && x < 3.0) ? sinc(x) * sinc(x / 3) : 0.0;
}

/* Indexed by Pillow's filter numbers (Image.Resampling): 0 NEAREST is not a convolution. */
static const Filter FILTERS[6] = {
    {NULL, 0.0},           {lanczos_weight, 3.0}, {triangle_weight, 1.0},
    {cubic_weight, 2.0},   {box_weight, 0.5},     {hamming_weight, 1.0},
};

/* The taps of a 1-D resize from in_size to out_size samples: for output i, ``count[i]``
 * fixed-point weights starting at input ``first[i]``, in ``coef[i * taps ...]``. Returns
 * ``taps`` (the most any output uses), 0 when out of memory. */
static int
taps_for(int in_size, int out_size, const Filter *filter, int **first, int **count, int32_t **coef) {
    double scale = (double)(float)in_size / out_size;
    double filterscale = scale < 1.0 ? 1.0 : scale;
    double support = filter->support * filterscale;
    int taps = (int)ceil(support) * 2 + 1;
    double *weights = malloc(sizeof(double) * taps);
    *first = malloc(sizeof(int) * out_size);
    *count = malloc(sizeof(int) * out_size);
    *coef = malloc(sizeof(int32_t) * (size_t)out_size * taps);
    if (!weights || !*first || !*count || !*coef) {
        free(weights);
        return 0;
    }
    for (int i = 0; i < out_size; i++) {
        double center = (i + 0.5) * scale, total = 0.0, ss = 1.0 / filterscale;
        int lo = (int)(center - support + 0.5), hi = (int)(center + support + 0.5);
        lo = lo < 0 ? 0 : lo;
        hi = (hi > in_size ? in_size : hi) - lo;
        for (int k = 0; k < hi; k++) {
            weights[k] = filter->weight((k + lo - center + 0.5) * ss);
            total += weights[k];
        }
        for (int k = 0; k < taps; k++) {
            double w = k < hi ? (total != 0.0 ? weights[k] / total : weights[k]) : 0.0;
            (*coef)[(size_t)i * taps + k] =
                w < 0 ? (int32_t)(-0.5 + w * (1 << PRECISION_BITS)) : (int32_t)(0.5 + w * (1 << PRECISION_BITS));
        }
        (*first)[i] = lo;
        (*count)[i] = hi;
    }
    free(weights);
    return taps;
}

/* Scratch images each thread keeps between calls, up to KEEP_MAX bytes each. Freed and
 * allocated again per call, they came back as fresh pages every time (PredictTask has glibc
 * give buffers of 1 MiB or more straight back, and trims its heap above 128 KiB), which cost
 * half as much as the resize itself. Larger ones (images not reduced by JPEG draft mode) are
 * still allocated per call, so a thread never keeps more than SLOTS * KEEP_MAX. */
enum { SIDEWAYS, NARROW, MIDDLE, SLOTS };
#define KEEP_MAX ((size_t)1 << 20)

typedef struct {
    void *buffer[SLOTS];
    size_t size[SLOTS];
} Kept;

static pthread_key_t kept_key;
static pthread_once_t kept_once = PTHREAD_ONCE_INIT;
static int kept_ready;

static void free_kept(void *kept) {
    for (int i = 0; i < SLOTS; i++) free(((Kept *)kept)->buffer[i]);
    free(kept);
}

static void make_kept_key(void) { kept_ready = pthread_key_create(&kept_key, free_kept) == 0; }

static void *scratch(int slot, size_t n) {
    pthread_once(&kept_once, make_kept_key);
    if (n > KEEP_MAX || !kept_ready) return malloc(n);
    Kept *kept = pthread_getspecific(kept_key);
    if (!kept) {
        if (!(kept = calloc(1, sizeof(Kept)))) return NULL;
        if (pthread_setspecific(kept_key, kept) != 0) {
            free(kept);
            return NULL;
        }
    }
    if (kept->size[slot] < n) {
        free(kept->buffer[slot]);
        kept->buffer[slot] = malloc(n);
        kept->size[slot] = kept->buffer[slot] ? n : 0;
    }
    return kept->buffer[slot];
}

static void done_with(void *buffer, size_t n) {
    if (n > KEEP_MAX || !kept_ready) free(buffer);
}

/* Built for AVX2 too where the compiler can, chosen at load time by the CPU: eight pixels'
 * channels per instruction instead of four (baseline x86-64 has no 32-bit vector multiply). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define VECTOR_CLONES
#endif

/* out = clip((half + sum over k of coef[k] * line (first + k)) >> PRECISION_BITS), for lines of
 * n bytes ``stride`` apart: the whole of one pass's work, and the loop that vectorises. */
VECTOR_CLONES static void
combine_lines(const uint8_t *src, size_t stride, int first, int count, const int32_t *coef,
              int32_t *restrict acc, size_t n, uint8_t *restrict out) {
    for (size_t i = 0; i < n; i++) acc[i] = 1 << (PRECISION_BITS - 1);
    for (int k = 0; k < count; k++) {
        const uint8_t *restrict line = src + (size_t)(first + k) * stride;
        const int32_t c = coef[k];
        for (size_t i = 0; i < n; i++) acc[i] += (int32_t)line[i] * c;
    }
    for (size_t i = 0; i < n; i++) {
        int32_t v = acc[i] >> PRECISION_BITS;
        out[i] = (uint8_t)(v < 0 ? 0 : (v > 255 ? 255 : v));
    }
}

/* dst (cols, rows, C) = src (rows, cols, C) turned on its side; src rows are ``src_stride``
 * bytes apart. In tiles, so that both sides stay in the cache, and written in dst's order: a
 * 3-byte pixel then moves as 4 bytes, whose last one the next pixel overwrites (not at the end
 * of a dst row or of a src row, where that byte would be outside the pixel's row). */
static void
transpose(const uint8_t *src, size_t src_stride, int rows, int cols, int channels, uint8_t *dst) {
    const int tile = 32;
    const size_t dst_stride = (size_t)rows * channels;
    for (int r0 = 0; r0 < rows; r0 += tile) {
        int r1 = r0 + tile < rows ? r0 + tile : rows;
        for (int c0 = 0; c0 < cols; c0 += tile) {
            int c1 = c0 + tile < cols ? c0 + tile : cols;
            for (int c = c0; c < c1; c++) {
                const uint8_t *s = src + (size_t)r0 * src_stride + (size_t)c * channels;
                uint8_t *d = dst + (size_t)c * dst_stride + (size_t)r0 * channels;
                if (channels == 1) {
                    for (int r = r0; r < r1; r++, s += src_stride) *d++ = *s;
                } else if (channels == 3 && c + 1 < cols) {
                    int wide_end = r1 < rows ? r1 : rows - 1;
                    int r = r0;
                    for (; r < wide_end; r++, s += src_stride, d += 3) memcpy(d, s, 4);
                    for (; r < r1; r++, s += src_stride, d += 3) memcpy(d, s, 3);
                } else {
                    for (int r = r0; r < r1; r++, s += src_stride, d += channels) memcpy(d, s, channels);
                }
            }
        }
    }
}

/* dst (rows, out_w, C) = src (rows, in_w, C) resized across, rows ``stride`` bytes apart: on its
 * side, combined as rows, and turned back. 0 when out of memory. */
static int
horizontal_pass(const uint8_t *src, size_t stride, int rows, int in_w, int out_w, int channels,
                const Filter *filter, uint8_t *dst) {
    int *first = NULL, *count = NULL;
    int32_t *coef = NULL, *acc = NULL;
    size_t column = (size_t)rows * channels;
    uint8_t *sideways = scratch(SIDEWAYS, (size_t)in_w * column), *narrow = scratch(NARROW, (size_t)out_w * column);
    int ok = 0, taps = taps_for(in_w, out_w, filter, &first, &count, &coef);
    acc = malloc(sizeof(int32_t) * column);
    if (taps && sideways && narrow && acc) {
        transpose(src, stride, rows, in_w, channels, sideways);
        for (int x = 0; x < out_w; x++)
            combine_lines(sideways, column, first[x], count[x], coef + (size_t)x * taps, acc, column,
                          narrow + (size_t)x * column);
        transpose(narrow, column, out_w, rows, channels, dst);
        ok = 1;
    }
    done_with(sideways, (size_t)in_w * column), done_with(narrow, (size_t)out_w * column);
    free(acc), free(first), free(count), free(coef);
    return ok;
}

/* dst (out_h, width, C) from the rows of src (width * C bytes each) that the vertical taps
 * name, less ``shift``: the first source row src holds. */
static int
vertical_pass(const uint8_t *src, int shift, int width, int channels, int out_h, const int *first,
              const int *count, const int32_t *coef, int taps, uint8_t *dst) {
    size_t line = (size_t)width * channels;
    int32_t *acc = malloc(sizeof(int32_t) * line);
    if (!acc) return 0;
    for (int y = 0; y < out_h; y++)
        combine_lines(src, line, first[y] - shift, count[y], coef + (size_t)y * taps, acc, line,
                      dst + (size_t)y * line);
    free(acc);
    return 1;
}

/* Pillow's two passes in Pillow's order: across first, on only the rows the vertical pass
 * reads; or, with ``vertical_first`` (Pillow 13 when the height shrinks much more than the
 * width), down first. The order changes the rounding between the passes, so it must match. */
static int
resample(const uint8_t *src, int in_h, int in_w, int channels, uint8_t *dst, int out_h, int out_w,
         const Filter *filter, int vertical_first) {
    int *first = NULL, *count = NULL;
    int32_t *coef = NULL;
    uint8_t *middle = NULL;
    size_t middle_size = 0;
    int ok = 0, need_h = out_w != in_w, need_v = out_h != in_h, taps = 0;
    size_t stride = (size_t)in_w * channels;
    if (!need_h && !need_v) {
        memcpy(dst, src, (size_t)in_h * stride);
        return 1;
    }
    if (need_v && !(taps = taps_for(in_h, out_h, filter, &first, &count, &coef))) goto done;
    if (!need_v) {
        ok = horizontal_pass(src, stride, in_h, in_w, out_w, channels, filter, dst);
    } else if (!need_h) {
        ok = vertical_pass(src, 0, in_w, channels, out_h, first, count, coef, taps, dst);
    } else if (vertical_first) {
        middle = scratch(MIDDLE, middle_size = (size_t)out_h * stride);
        ok = middle && vertical_pass(src, 0, in_w, channels, out_h, first, count, coef, taps, middle) &&
             horizontal_pass(middle, stride, out_h, in_w, out_w, channels, filter, dst);
    } else {
        int row0 = first[0], rows = first[out_h - 1] + count[out_h - 1] - row0;
        middle = scratch(MIDDLE, middle_size = (size_t)rows * out_w * channels);
        ok = middle && horizontal_pass(src + (size_t)row0 * stride, stride, rows, in_w, out_w, channels, filter,
                                       middle) &&
             vertical_pass(middle, row0, out_w, channels, out_h, first, count, coef, taps, dst);
    }
done:
    done_with(middle, middle_size);
    free(first), free(count), free(coef);
    return ok;
}

static int
image_buffer(PyObject *obj, Py_buffer *view, int writable, const char *name) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) < 0)
        return 0;
    if (view->ndim != 3 || view->itemsize != 1 || (view->format && strcmp(view->format, "B") != 0)) {
        PyErr_Format(PyExc_ValueError, "%s must be a C-contiguous uint8 array of shape (H, W, C)", name);
        PyBuffer_Release(view);
        return 0;
    }
    return 1;
}

static PyObject *
py_resample(PyObject *Py_UNUSED(module), PyObject *args) {
    PyObject *src_obj, *dst_obj;
    int filter, vertical_first;
    if (!PyArg_ParseTuple(args, "OOip", &src_obj, &dst_obj, &filter, &vertical_first)) return NULL;
    if (filter < 1 || filter > 5) return PyErr_Format(PyExc_ValueError, "filter %d is not one of 1-5", filter);
    Py_buffer src, dst;
    if (!image_buffer(src_obj, &src, 0, "src")) return NULL;
    if (!image_buffer(dst_obj, &dst, 1, "dst")) {
        PyBuffer_Release(&src);
        return NULL;
    }
    int ok = 0;
    if (src.shape[2] != dst.shape[2] || src.shape[0] < 1 || src.shape[1] < 1 || dst.shape[0] < 1 ||
        dst.shape[1] < 1 || src.shape[0] > INT32_MAX / 8 || src.shape[1] > INT32_MAX / 8 ||
        dst.shape[0] > INT32_MAX / 8 || dst.shape[1] > INT32_MAX / 8) {
        PyErr_SetString(PyExc_ValueError, "src and dst must be non-empty and have the same channels");
    } else {
        Py_BEGIN_ALLOW_THREADS
        ok = resample(src.buf, (int)src.shape[0], (int)src.shape[1], (int)src.shape[2], dst.buf,
                      (int)dst.shape[0], (int)dst.shape[1], &FILTERS[filter], vertical_first);
        Py_END_ALLOW_THREADS
        if (!ok) PyErr_NoMemory();
    }
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"resample", py_resample, METH_VARARGS,
     "resample(src, dst, filter, vertical_first): resize src (H, W, C uint8) into dst (h, w, C uint8) "
     "as Pillow's Image.resize with that filter (1 LANCZOS, 2 BILINEAR, 3 BICUBIC, 4 BOX, 5 HAMMING) "
     "does, its passes in the order given."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_resample", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC
PyInit__resample(void) { return PyModule_Create(&module); }
