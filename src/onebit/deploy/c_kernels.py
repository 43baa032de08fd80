"""The C functions an exported model calls (:func:`onebit.deploy.export_c.export_c`).

Each entry of :data:`KERNELS` is one static C99 function, with the names of the entries it
calls; the exporter copies into ``NAME.c`` exactly the functions the model uses, so the file
compiles without unused-function warnings. They follow the numpy runtime op for op
(:mod:`onebit.deploy.runtime`), for one image:

- packed ±1 activations are 32-bit words (Cortex-M has no 64-bit popcount): element ``j``
  of a vector is bit ``j % 32`` of word ``j / 32``, bit 1 = +1, tail bits 0; feature maps are
  NHWC with each pixel's channels in ``ceil(C / 32)`` words;
- float maps are NCHW, as PyTorch and the numpy runtime keep them;
- a binary layer's pre-activation on packed input is the exact integer
  ``K - 2 popcount(a XOR w)`` (zero padding adds 0); its epilogue is either packed bits
  ``(d >= t) XOR flip`` or floats ``d * scale + shift``, the same two the runtime has
  (:class:`onebit.deploy.runtime._BinaryLayer`); max pooling before the epilogue takes the
  max of ``d`` (for bits the same as the OR of the thresholded bits, since ``d >= t`` is
  monotone).

No function allocates, calls the C library or writes anything but its output argument.
"""

from __future__ import annotations

from typing import NamedTuple


class Kernel(NamedTuple):
    code: str
    needs: tuple[str, ...] = ()


KERNELS: dict[str, Kernel] = {}


def _kernel(name: str, code: str, needs: tuple[str, ...] = ()) -> None:
    KERNELS[name] = Kernel(code.strip("\n") + "\n", needs)


def closure(names: set[str]) -> list[str]:
    """``names`` and every kernel they call, callees first (each once)."""
    ordered: list[str] = []

    def visit(name: str) -> None:
        if name in ordered:
            return
        for dependency in KERNELS[name].needs:
            visit(dependency)
        ordered.append(name)

    for name in sorted(names):
        visit(name)
    return ordered


_kernel("popcount", """
static int ob_popcount(uint32_t v)
{
#if defined(__GNUC__) && (defined(__POPCNT__) || defined(__aarch64__))
    return __builtin_popcount(v);
#else
    v = v - ((v >> 1) & 0x55555555u);
    v = (v & 0x33333333u) + ((v >> 2) & 0x33333333u);
    v = (v + (v >> 4)) & 0x0f0f0f0fu;
    return (int)((v * 0x01010101u) >> 24);
#endif
}
""")

_kernel("put_bit", """
/* Channel o of a row of packed output bits: set while counting, flipped word by word. */
static void ob_put_bit(uint32_t *row, int o, int n, int bit, uint32_t *word, const uint32_t *flip)
{
    if (bit)
        *word |= 1u << (o & 31);
    if ((o & 31) == 31 || o == n - 1) {
        row[o >> 5] = *word ^ flip[o >> 5];
        *word = 0;
    }
}
""")

_kernel("dense_bits", """
/* Binary dense layer on packed input x (k features in kw words), weights w (n rows of kw words).
   Bits out (thr, flip) when ybits is given, else floats d * scale + shift into yf. */
static void ob_dense_bits(const uint32_t *x, int kw, int k, const uint32_t *w, int n,
                          const ob_threshold_t *thr, const uint32_t *flip, uint32_t *ybits,
                          const float *scale, const float *shift, float *yf)
{
    uint32_t word = 0;
    int o, j;
    for (o = 0; o < n; o++) {
        const uint32_t *row = w + (long)o * kw;
        int32_t mismatches = 0, d;
        for (j = 0; j < kw; j++)
            mismatches += ob_popcount(x[j] ^ row[j]);
        d = k - 2 * mismatches;
        if (ybits)
            ob_put_bit(ybits, o, n, d >= thr[o], &word, flip);
        else
            yf[o] = (float)d * scale[o] + shift[o];
    }
}
""", ("popcount", "put_bit"))

_kernel("bit_planes", """
/* k uint8 values -> their 8 bit planes, each packed in kw words: planes[b * kw + j / 32] holds
   bit b of x[j] at bit j % 32. */
static void ob_bit_planes(const uint8_t *x, int k, int kw, uint32_t *planes)
{
    int b, j;
    for (j = 0; j < 8 * kw; j++)
        planes[j] = 0;
    for (j = 0; j < k; j++)
        for (b = 0; b < 8; b++)
            planes[b * kw + (j >> 5)] |= (uint32_t)((x[j] >> b) & 1u) << (j & 31);
}
""")

_kernel("planes_dot", """
/* sum of the uint8 codes (given as 8 bit planes of kw words) where the packed weights are +1 */
static int32_t ob_planes_dot(const uint32_t *planes, int kw, const uint32_t *row)
{
    int32_t positive = 0;
    int b, j;
    for (b = 0; b < 8; b++) {
        int32_t count = 0;
        for (j = 0; j < kw; j++)
            count += ob_popcount(planes[b * kw + j] & row[j]);
        positive += count << b;
    }
    return positive;
}
""", ("popcount",))

_kernel("dense_u8", """
/* Binary dense layer on k uint8 pixels x = s * code + o, given as bit planes: the integer
   product P = code . w = 2 * sum(codes where w = +1) - sum(codes) is exact, one popcount per
   plane and word. Bits out compare P with integer thresholds that already hold s and o; floats
   are (float)(P * s + ow[o]) * scale + shift, in the numpy runtime's float64 order. */
static void ob_dense_u8(const uint32_t *planes, int kw, const uint32_t *w, int n,
                        const ob_threshold_t *thr, const uint32_t *flip, uint32_t *ybits,
                        double s, const double *ow, const float *scale, const float *shift, float *yf)
{
    uint32_t word = 0;
    int32_t total = 0;
    int o, j, b;
    for (b = 0; b < 8; b++)
        for (j = 0; j < kw; j++)
            total += ob_popcount(planes[b * kw + j]) << b;
    for (o = 0; o < n; o++) {
        int32_t p = 2 * ob_planes_dot(planes, kw, w + (long)o * kw) - total;
        if (ybits)
            ob_put_bit(ybits, o, n, p >= thr[o], &word, flip);
        else
            yf[o] = (float)((double)p * s + ow[o]) * scale[o] + shift[o];
    }
}
""", ("popcount", "planes_dot", "put_bit"))

_kernel("dense_float", """
/* Binary dense layer on real input x (k floats): d = 2 p - t in float, with p the sum of the
   inputs whose weight is +1 and t the sum of all inputs, each added in input order (the numpy
   runtime's order, so the bits are the same). */
static void ob_dense_float(const float *x, int k, const uint32_t *w, int kw, int n,
                           const double *thr, const uint32_t *flip, uint32_t *ybits,
                           const float *scale, const float *shift, float *yf)
{
    uint32_t word = 0;
    float t = 0.0f;
    int o, j;
    for (j = 0; j < k; j++)
        t += x[j];
    for (o = 0; o < n; o++) {
        const uint32_t *row = w + (long)o * kw;
        float p = 0.0f, d;
        for (j = 0; j < k; j++)
            if ((row[j >> 5] >> (j & 31)) & 1u)
                p += x[j];
        d = 2.0f * p - t;
        if (ybits)
            ob_put_bit(ybits, o, n, (double)d >= thr[o], &word, flip);
        else
            yf[o] = d * scale[o] + shift[o];
    }
}
""", ("put_bit",))

_kernel("conv_bits", """
/* Binary convolution of packed NHWC input (h x w pixels, cin channels in cw words per pixel),
   weights (cout, kh, kw, cw words), zero padding, then max pooling (pk x pk, stride ps; pk = 1:
   none) of the integer pre-activations. Bits out: NHWC, thr / flip; floats out: NCHW. */
static void ob_conv_bits(const uint32_t *x, int h, int w, int cin, int cw, const uint32_t *wt, int cout,
                         int kh, int kw, int stride, int pad, int pk, int ps,
                         const ob_threshold_t *thr, const uint32_t *flip, uint32_t *ybits,
                         const float *scale, const float *shift, float *yf)
{
    int ho = (h + 2 * pad - kh) / stride + 1, wo = (w + 2 * pad - kw) / stride + 1;
    int hp = (ho - pk) / ps + 1, wp = (wo - pk) / ps + 1, cow = (cout + 31) / 32;
    int py, px, o, qy, qx, dy, j;
    for (py = 0; py < hp; py++)
        for (px = 0; px < wp; px++) {
            uint32_t word = 0;
            for (o = 0; o < cout; o++) {
                int32_t best = 0;
                int first = 1;
                for (qy = 0; qy < pk; qy++)
                    for (qx = 0; qx < pk; qx++) {
                        int iy0 = (py * ps + qy) * stride - pad, ix0 = (px * ps + qx) * stride - pad;
                        /* the taps inside the map: rows dy0..dy1-1, columns dx0..dx1-1; each row of
                           them is contiguous in x (NHWC) and in the weights */
                        int dy0 = iy0 < 0 ? -iy0 : 0, dy1 = iy0 + kh > h ? h - iy0 : kh;
                        int dx0 = ix0 < 0 ? -ix0 : 0, dx1 = ix0 + kw > w ? w - ix0 : kw;
                        int n = (dx1 - dx0) * cw;
                        int32_t mismatches = 0, d;
                        for (dy = dy0; dy < dy1; dy++) {
                            const uint32_t *a = x + ((long)(iy0 + dy) * w + ix0 + dx0) * cw;
                            const uint32_t *b = wt + (((long)o * kh + dy) * kw + dx0) * cw;
                            for (j = 0; j < n; j++)
                                mismatches += ob_popcount(a[j] ^ b[j]);
                        }
                        d = (dy1 - dy0) * (dx1 - dx0) * cin - 2 * mismatches;
                        if (first || d > best)
                            best = d;
                        first = 0;
                    }
                if (ybits)
                    ob_put_bit(ybits + ((long)py * wp + px) * cow, o, cout, best >= thr[o], &word, flip);
                else
                    yf[((long)o * hp + py) * wp + px] = (float)best * scale[o] + shift[o];
            }
        }
}
""", ("popcount", "put_bit"))

_kernel("conv_u8", """
/* Binary convolution of uint8 NCHW pixels x = s * code + o (cin x h x w), no padding, then max
   pooling (pk = 1: none) of the exact integer products P = code * w: each output channel's
   weights are kwords words, bit (dy * kw + dx) * cin + c for tap (dy, dx) of channel c; each
   receptive field becomes 8 bit planes of kwords words (scratch), then P as in ob_dense_u8.
   scratch also holds each channel's pooled maximum (cout words after the planes). Bits out
   (NHWC) compare P with integer thresholds that already hold s and o; floats out (NCHW) are
   (float)(P * s + ow[o]) * scale + shift, in the numpy runtime's float64 order. */
static void ob_conv_u8(const uint8_t *x, int h, int w, int cin, const uint32_t *wt, int kwords, int cout,
                       int kh, int kw, int stride, int pk, int ps,
                       const ob_threshold_t *thr, const uint32_t *flip, uint32_t *ybits,
                       double s, const double *ow, const float *scale, const float *shift, float *yf,
                       int32_t *scratch)
{
    int ho = (h - kh) / stride + 1, wo = (w - kw) / stride + 1;
    int hp = (ho - pk) / ps + 1, wp = (wo - pk) / ps + 1, cow = (cout + 31) / 32;
    uint32_t *planes = (uint32_t *)scratch;
    int32_t *best = scratch + 8 * kwords;
    int py, px, o, qy, qx, dy, dx, c, b, t;
    for (py = 0; py < hp; py++)
        for (px = 0; px < wp; px++) {
            uint32_t word = 0;
            for (qy = 0; qy < pk; qy++)
                for (qx = 0; qx < pk; qx++) {
                    int iy0 = (py * ps + qy) * stride, ix0 = (px * ps + qx) * stride;
                    int32_t total = 0;
                    for (t = 0; t < 8 * kwords; t++)
                        planes[t] = 0;
                    for (dy = 0, t = 0; dy < kh; dy++)
                        for (dx = 0; dx < kw; dx++)
                            for (c = 0; c < cin; c++, t++) {
                                uint32_t v = x[((long)c * h + iy0 + dy) * w + ix0 + dx];
                                total += (int32_t)v;
                                for (b = 0; v; b++, v >>= 1)
                                    planes[b * kwords + (t >> 5)] |= (v & 1u) << (t & 31);
                            }
                    for (o = 0; o < cout; o++) {
                        int32_t p = 2 * ob_planes_dot(planes, kwords, wt + (long)o * kwords) - total;
                        if ((qy == 0 && qx == 0) || p > best[o])
                            best[o] = p;
                    }
                }
            for (o = 0; o < cout; o++) {
                if (ybits)
                    ob_put_bit(ybits + ((long)py * wp + px) * cow, o, cout, best[o] >= thr[o], &word, flip);
                else
                    yf[((long)o * hp + py) * wp + px] = (float)((double)best[o] * s + ow[o]) * scale[o] + shift[o];
            }
        }
}
""", ("planes_dot", "put_bit"))

_kernel("conv_float", """
/* Binary convolution of real NCHW input (cin x h x w floats), weights (cout, kh, kw, cw words:
   the channels of one tap), zero padding, then max pooling (pk = 1: none); d = 2 p - t over each
   receptive field as ob_dense_float computes it, the inputs taken tap by tap, channels fastest
   (padding taps add nothing). */
static void ob_conv_float(const float *x, int h, int w, int cin, int cw, const uint32_t *wt, int cout,
                          int kh, int kw, int stride, int pad, int pk, int ps,
                          const double *thr, const uint32_t *flip, uint32_t *ybits,
                          const float *scale, const float *shift, float *yf)
{
    int ho = (h + 2 * pad - kh) / stride + 1, wo = (w + 2 * pad - kw) / stride + 1;
    int hp = (ho - pk) / ps + 1, wp = (wo - pk) / ps + 1, cow = (cout + 31) / 32;
    int py, px, o, qy, qx, dy, dx, c;
    for (py = 0; py < hp; py++)
        for (px = 0; px < wp; px++) {
            uint32_t word = 0;
            for (o = 0; o < cout; o++) {
                float best = 0.0f;
                int first = 1;
                for (qy = 0; qy < pk; qy++)
                    for (qx = 0; qx < pk; qx++) {
                        int iy0 = (py * ps + qy) * stride - pad, ix0 = (px * ps + qx) * stride - pad;
                        float p = 0.0f, t = 0.0f, d;
                        for (dy = 0; dy < kh; dy++) {
                            int iy = iy0 + dy;
                            if (iy < 0 || iy >= h)
                                continue;
                            for (dx = 0; dx < kw; dx++) {
                                int ix = ix0 + dx;
                                const uint32_t *b = wt + (((long)o * kh + dy) * kw + dx) * cw;
                                if (ix < 0 || ix >= w)
                                    continue;
                                for (c = 0; c < cin; c++) {
                                    float v = x[((long)c * h + iy) * w + ix];
                                    if ((b[c >> 5] >> (c & 31)) & 1u)
                                        p += v;
                                    t += v;
                                }
                            }
                        }
                        d = 2.0f * p - t;
                        if (first || d > best)
                            best = d;
                        first = 0;
                    }
                if (ybits)
                    ob_put_bit(ybits + ((long)py * wp + px) * cow, o, cout, (double)best >= thr[o], &word, flip);
                else
                    yf[((long)o * hp + py) * wp + px] = best * scale[o] + shift[o];
            }
        }
}
""", ("put_bit",))

_kernel("conv2d", """
/* Float convolution, NCHW in and out, weights (cout, cin, kh, kw), zero padding: products summed
   in double, rounded to float, plus the bias (as the numpy runtime computes it). */
static void ob_conv2d(const float *x, int cin, int h, int w, const float *wt, const float *bias, int cout,
                      int kh, int kw, int stride, int pad, float *y)
{
    int ho = (h + 2 * pad - kh) / stride + 1, wo = (w + 2 * pad - kw) / stride + 1;
    int o, oy, ox, c, dy, dx;
    for (o = 0; o < cout; o++)
        for (oy = 0; oy < ho; oy++)
            for (ox = 0; ox < wo; ox++) {
                double acc = 0.0;
                for (c = 0; c < cin; c++)
                    for (dy = 0; dy < kh; dy++) {
                        int iy = oy * stride - pad + dy;
                        if (iy < 0 || iy >= h)
                            continue;
                        for (dx = 0; dx < kw; dx++) {
                            int ix = ox * stride - pad + dx;
                            if (ix >= 0 && ix < w)
                                acc += (double)x[((long)c * h + iy) * w + ix]
                                       * wt[(((long)o * cin + c) * kh + dy) * kw + dx];
                        }
                    }
                y[((long)o * ho + oy) * wo + ox] = (float)acc + bias[o];
            }
}
""")

_kernel("linear", """
/* Float fully connected layer: y = W x + b, W (n, k), summed in double as ob_conv2d. */
static void ob_linear(const float *x, int k, const float *wt, const float *bias, int n, float *y)
{
    int o, j;
    for (o = 0; o < n; o++) {
        const float *row = wt + (long)o * k;
        double acc = 0.0;
        for (j = 0; j < k; j++)
            acc += (double)x[j] * row[j];
        y[o] = (float)acc + bias[o];
    }
}
""")

_kernel("dequantize", """
/* uint8 pixels -> floats code * scale[c] + offset[c] (channels of inner values each). */
static void ob_dequantize(const uint8_t *x, int channels, int inner, const float *scale, const float *offset,
                          float *y)
{
    int c, i;
    for (c = 0; c < channels; c++)
        for (i = 0; i < inner; i++)
            y[c * inner + i] = (float)x[c * inner + i] * scale[c] + offset[c];
}
""")

_kernel("affine", """
/* y = x * scale[c] + shift[c] per channel (channels of inner values each); y may be x. */
static void ob_affine(const float *x, int channels, int inner, const float *scale, const float *shift, float *y)
{
    int c, i;
    for (c = 0; c < channels; c++)
        for (i = 0; i < inner; i++)
            y[c * inner + i] = x[c * inner + i] * scale[c] + shift[c];
}
""")

_kernel("rprelu", """
/* RPReLU per channel (channels of inner values each): t = x - g[c], y = (t >= 0 ? t : s[c] * t) + z[c]. */
static void ob_rprelu(const float *x, int channels, int inner, const float *g, const float *s, const float *z,
                      float *y)
{
    int c, i;
    for (c = 0; c < channels; c++)
        for (i = 0; i < inner; i++) {
            float t = x[c * inner + i] - g[c];
            y[c * inner + i] = (t >= 0.0f ? t : t * s[c]) + z[c];
        }
}
""")

_kernel("relu", """
static void ob_relu(const float *x, int n, float *y)
{
    int i;
    for (i = 0; i < n; i++)
        y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}
""")

_kernel("hard_sigmoid", """
/* clip((slope * x + 1) / 2, 0, 1) */
static void ob_hard_sigmoid(const float *x, int n, float slope, float *y)
{
    int i;
    for (i = 0; i < n; i++) {
        float v = (slope * x[i] + 1.0f) / 2.0f;
        y[i] = v < 0.0f ? 0.0f : v > 1.0f ? 1.0f : v;
    }
}
""")

_kernel("step", """
/* A binary neuron at eval: 1 where x >= 0, else 0. */
static void ob_step(const float *x, int n, float *y)
{
    int i;
    for (i = 0; i < n; i++)
        y[i] = x[i] >= 0.0f ? 1.0f : 0.0f;
}
""")

_kernel("sign", """
static void ob_sign(const float *x, int n, float *y)
{
    int i;
    for (i = 0; i < n; i++)
        y[i] = x[i] >= 0.0f ? 1.0f : -1.0f;
}
""")

_kernel("add", """
static void ob_add(const float *a, const float *b, int n, float *y)
{
    int i;
    for (i = 0; i < n; i++)
        y[i] = a[i] + b[i];
}
""")

_kernel("pool_float", """
/* Unpadded max (mean = 0) or average (mean = 1) pooling of NCHW floats, taps summed in row order. */
static void ob_pool_float(const float *x, int channels, int h, int w, int k, int stride, int mean, float *y)
{
    int ho = (h - k) / stride + 1, wo = (w - k) / stride + 1;
    int c, oy, ox, dy, dx;
    for (c = 0; c < channels; c++)
        for (oy = 0; oy < ho; oy++)
            for (ox = 0; ox < wo; ox++) {
                const float *p = x + ((long)c * h + oy * stride) * w + ox * stride;
                float acc = p[0];
                for (dy = 0; dy < k; dy++)
                    for (dx = 0; dx < k; dx++) {
                        float v = p[dy * w + dx];
                        if (dy == 0 && dx == 0)
                            continue;
                        if (mean)
                            acc += v;
                        else if (v > acc)
                            acc = v;
                    }
                y[((long)c * ho + oy) * wo + ox] = mean ? acc / (float)(k * k) : acc;
            }
}
""")

_kernel("pool_bits", """
/* Max pooling of packed NHWC maps: the OR of the words in each window. */
static void ob_pool_bits(const uint32_t *x, int h, int w, int cw, int k, int stride, uint32_t *y)
{
    int ho = (h - k) / stride + 1, wo = (w - k) / stride + 1;
    int oy, ox, dy, dx, j;
    for (oy = 0; oy < ho; oy++)
        for (ox = 0; ox < wo; ox++) {
            uint32_t *out = y + ((long)oy * wo + ox) * cw;
            for (j = 0; j < cw; j++)
                out[j] = 0;
            for (dy = 0; dy < k; dy++)
                for (dx = 0; dx < k; dx++) {
                    const uint32_t *in = x + ((long)(oy * stride + dy) * w + ox * stride + dx) * cw;
                    for (j = 0; j < cw; j++)
                        out[j] |= in[j];
                }
        }
}
""")

_kernel("pack", """
/* Signs of floats (x >= 0 is bit 1) packed: channels (of inner values each) become the packed
   axis of each of the inner positions (NCHW maps -> NHWC bits; inner = 1: a vector). */
static void ob_pack(const float *x, int channels, int inner, uint32_t *y)
{
    int cw = (channels + 31) / 32, i, c;
    for (i = 0; i < inner; i++) {
        uint32_t *out = y + (long)i * cw;
        for (c = 0; c < cw; c++)
            out[c] = 0;
        for (c = 0; c < channels; c++)
            if (x[(long)c * inner + i] >= 0.0f)
                out[c >> 5] |= 1u << (c & 31);
    }
}
""")

_kernel("unpack", """
/* Packed bits -> +-1 floats: the inverse of ob_pack. */
static void ob_unpack(const uint32_t *x, int channels, int inner, float *y)
{
    int cw = (channels + 31) / 32, i, c;
    for (i = 0; i < inner; i++)
        for (c = 0; c < channels; c++)
            y[(long)c * inner + i] = ((x[(long)i * cw + (c >> 5)] >> (c & 31)) & 1u) ? 1.0f : -1.0f;
}
""")

_kernel("flatten_bits", """
/* Packed NHWC map (channels x inner pixels) -> a packed vector in PyTorch's order (c, y, x). */
static void ob_flatten_bits(const uint32_t *x, int channels, int inner, uint32_t *y)
{
    int cw = (channels + 31) / 32, n = channels * inner, i, c, j;
    for (j = 0; j < (n + 31) / 32; j++)
        y[j] = 0;
    for (i = 0; i < inner; i++)
        for (c = 0; c < channels; c++)
            if ((x[(long)i * cw + (c >> 5)] >> (c & 31)) & 1u) {
                j = c * inner + i;
                y[j >> 5] |= 1u << (j & 31);
            }
}
""")

_kernel("copy", """
static void ob_copy(const float *x, int n, float *y)
{
    int i;
    for (i = 0; i < n; i++)
        y[i] = x[i];
}
""")
