// Pooling with Caffe's semantics (netc/layers/pool.py is the reference):
// MAX and AVE, forward and backward, for float (accumulating in double) and double.
//
// Geometry (resolved on the host, netc.runtime.cuda_kernels): window (oh, ow) covers rows
// hstart = oh*sh - ph ... hstart + kh - 1 and columns likewise; ceil rounding, global
// pooling and the output size are already folded into (kh, kw, sh, sw, ph, pw, OH, OW).
//   MAX  scans the window clipped to the image (padding acts as -inf); the first maximum
//        in the row-major scan wins (strict >), its flat index h*W + w in the input plane
//        goes to an int32 mask.
//   AVE  sums the clipped window and divides by (hend - hstart)*(wend - wstart) with
//        hend = min(hstart + kh, H + ph) taken before clipping: padded zeros count, the
//        ceil-mode overhang beyond H + ph does not.
//
// Tiling and memory-access plan. Pooling does one or two flops per byte, so it is bound
// by memory bandwidth and the plan is about coalescing, not reuse in shared memory:
//   - One thread per OUTPUT element in the forward, one per INPUT element in the
//     backward, with grid-stride loops over NCHW-flat indices: consecutive threads of a
//     warp own consecutive w, so every write is one coalesced transaction and the reads
//     of a window row are contiguous (stride sw apart across the warp).
//   - Overlapping windows (stride < kernel) re-read the same input lines; a warp's
//     windows span a few lines, so those re-reads hit in L1/L2. Staging tiles in shared
//     memory would save little at these kernel sizes (2x2 ... 3x3; a global pool reads
//     everything once anyway) and would cost a barrier per tile.
//   - The backward is a GATHER over the bottom: each input element visits the few
//     windows that contain it and sums their diffs itself. No atomics, no zero-fill
//     pass, and the sum order is fixed, so the result is deterministic run to run.
//   - Float sums are carried in double: an AVE window (a 13x13 global pool has 169
//     terms) or a gradient gather mixes signs and cancels, and the extra adds hide
//     under the memory latency.
//   - A thread decodes its flat index into (plane, row, column), and the backward finds
//     its covering windows by dividing by the stride: five or six integer divisions per
//     element, which a GPU does in software (some 20 instructions each): more issue
//     slots than the element's few loads and compares take. They are multiplications
//     by the divisors' magic numbers instead (common.cuh's Divider), made on the host.
// Indices are 64-bit where they span the whole tensor, 32-bit inside one plane.

#include "common.cuh"

// The geometry every pooling kernel takes. The entry points receive it as plain int
// arguments (the simplest launch from Python: one numpy.int32 each) and gather it here.
// The Dividers (common.cuh) divide a flat index by the plane's sizes, and a position by
// the stride, without a division: each takes its magic number and shift as two more ints.
struct PoolGeometry {
    int height, width;                      // the input plane
    int pooled_height, pooled_width;        // OH, OW
    int kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w;
    Divider by_height, by_width, by_pooled_height, by_pooled_width, by_stride_h, by_stride_w;
};
#define POOL_GEOMETRY_PARAMS                                                                   \
    int height, int width, int pooled_height, int pooled_width, int kernel_h, int kernel_w,      \
        int stride_h, int stride_w, int pad_h, int pad_w, int height_magic, int height_shift,    \
        int width_magic, int width_shift, int pooled_height_magic, int pooled_height_shift,      \
        int pooled_width_magic, int pooled_width_shift, int stride_h_magic, int stride_h_shift, \
        int stride_w_magic, int stride_w_shift
#define POOL_GEOMETRY                                                                           \
    PoolGeometry { height, width, pooled_height, pooled_width, kernel_h, kernel_w, stride_h,      \
                   stride_w, pad_h, pad_w, make_divider(height, height_magic, height_shift),       \
                   make_divider(width, width_magic, width_shift),                                \
                   make_divider(pooled_height, pooled_height_magic, pooled_height_shift),        \
                   make_divider(pooled_width, pooled_width_magic, pooled_width_shift),           \
                   make_divider(stride_h, stride_h_magic, stride_h_shift),                       \
                   make_divider(stride_w, stride_w_magic, stride_w_shift) }

// AVE's divisor for a window starting at `start` along one axis: its extent up to
// size + pad, before clipping to the image.
__device__ __forceinline__ int ave_extent(int start, int kernel, int size, int pad) {
    return imin(start + kernel, size + pad) - start;
}

// The windows along one axis that contain input position i: [first, last).
// Window o covers o*s - pad ... o*s - pad + k - 1, so o*s <= i + pad < o*s + k.
__device__ __forceinline__ void windows_containing(int i, int kernel, const Divider& stride, int pad, int pooled,
                                                   int* first, int* last) {
    const int shifted = i + pad;
    *first = shifted < kernel ? 0 : static_cast<int>(stride.quotient(shifted - kernel)) + 1;
    *last = imin(static_cast<int>(stride.quotient(shifted)) + 1, pooled);
}

// What the backward's gather needs of input element `index` (NCHW-flat): its plane
// (n*C + c), its position (h, w) in the plane, and the windows [ph0, ph1) x [pw0, pw1)
// that contain it.
struct CoveringWindows {
    long long plane;
    int h, w;
    int ph0, ph1, pw0, pw1;
};
__device__ __forceinline__ CoveringWindows covering_windows(long long index, const PoolGeometry& g) {
    CoveringWindows element;
    const long long rows = g.by_width.quotient(index);          // plane · H + h
    element.w = static_cast<int>(index - rows * g.width);
    element.plane = g.by_height.quotient(rows);
    element.h = static_cast<int>(rows - element.plane * g.height);
    windows_containing(element.h, g.kernel_h, g.by_stride_h, g.pad_h, g.pooled_height, &element.ph0, &element.ph1);
    windows_containing(element.w, g.kernel_w, g.by_stride_w, g.pad_w, g.pooled_width, &element.pw0, &element.pw1);
    return element;
}

// Where output element `index` (NCHW-flat) lies: its plane (n·C + c) and (ph, pw).
struct PooledPosition {
    long long plane;
    int ph, pw;
};
__device__ __forceinline__ PooledPosition pooled_position(long long index, const PoolGeometry& g) {
    const long long rows = g.by_pooled_width.quotient(index);   // plane · OH + ph
    const long long plane = g.by_pooled_height.quotient(rows);
    return PooledPosition{plane, static_cast<int>(rows - plane * g.pooled_height),
                          static_cast<int>(index - rows * g.pooled_width)};
}

// WITH_MASK: write the arg-max for the backward; inference skips it (a fifth less traffic).
template <typename T, bool WITH_MASK>
__device__ __forceinline__ void max_pool_forward(long long count, const T* __restrict__ bottom,
                                                 PoolGeometry g, T* __restrict__ top,
                                                 int* __restrict__ mask) {
    for (long long index = first_index(); index < count; index += grid_step()) {
        const PooledPosition at = pooled_position(index, g);
        const int pw = at.pw, ph = at.ph;
        const long long plane = at.plane;
        const int hstart = imax(ph * g.stride_h - g.pad_h, 0);
        const int wstart = imax(pw * g.stride_w - g.pad_w, 0);
        const int hend = imin(ph * g.stride_h - g.pad_h + g.kernel_h, g.height);
        const int wend = imin(pw * g.stride_w - g.pad_w + g.kernel_w, g.width);
        const T* x = bottom + plane * g.height * g.width;
        // Caffe's shapes guarantee every clipped window holds a pixel; start from its
        // first one so that a window of -inf still reports an arg-max inside it.
        int best = hstart * g.width + wstart;
        T best_value = x[best];
        for (int h = hstart; h < hend; ++h) {
            for (int w = wstart; w < wend; ++w) {
                const T v = x[h * g.width + w];
                if (v > best_value) {           // strict: the first maximum stays
                    best_value = v;
                    best = h * g.width + w;
                }
            }
        }
        top[index] = best_value;
        if constexpr (WITH_MASK) mask[index] = best;
    }
}

template <typename T>
__device__ __forceinline__ void max_pool_backward(long long count, const T* __restrict__ top_diff,
                                                  const int* __restrict__ mask, PoolGeometry g,
                                                  T* __restrict__ bottom_diff) {
    typedef typename Accum<T>::type Acc;
    for (long long index = first_index(); index < count; index += grid_step()) {
        const CoveringWindows element = covering_windows(index, g);
        const long long offset = element.plane * g.pooled_height * g.pooled_width;
        const int self = element.h * g.width + element.w;
        Acc sum = 0;
        for (int ph = element.ph0; ph < element.ph1; ++ph) {
            for (int pw = element.pw0; pw < element.pw1; ++pw) {
                const int at = ph * g.pooled_width + pw;
                if (mask[offset + at] == self) {
                    sum += static_cast<Acc>(top_diff[offset + at]);
                }
            }
        }
        bottom_diff[index] = static_cast<T>(sum);
    }
}

template <typename T>
__device__ __forceinline__ void ave_pool_forward(long long count, const T* __restrict__ bottom,
                                                 PoolGeometry g, T* __restrict__ top) {
    typedef typename Accum<T>::type Acc;
    for (long long index = first_index(); index < count; index += grid_step()) {
        const PooledPosition at = pooled_position(index, g);
        const int pw = at.pw, ph = at.ph;
        const long long plane = at.plane;
        const int hs = ph * g.stride_h - g.pad_h;
        const int ws = pw * g.stride_w - g.pad_w;
        const int divisor = ave_extent(hs, g.kernel_h, g.height, g.pad_h) *
                            ave_extent(ws, g.kernel_w, g.width, g.pad_w);
        const int hstart = imax(hs, 0), wstart = imax(ws, 0);
        const int hend = imin(hs + g.kernel_h, g.height), wend = imin(ws + g.kernel_w, g.width);
        const T* x = bottom + plane * g.height * g.width;
        Acc sum = 0;
        for (int h = hstart; h < hend; ++h) {
            for (int w = wstart; w < wend; ++w) {
                sum += static_cast<Acc>(x[h * g.width + w]);
            }
        }
        top[index] = static_cast<T>(sum / static_cast<Acc>(divisor));
    }
}

template <typename T>
__device__ __forceinline__ void ave_pool_backward(long long count, const T* __restrict__ top_diff,
                                                  PoolGeometry g, T* __restrict__ bottom_diff) {
    typedef typename Accum<T>::type Acc;
    for (long long index = first_index(); index < count; index += grid_step()) {
        const CoveringWindows element = covering_windows(index, g);
        const T* dy = top_diff + element.plane * g.pooled_height * g.pooled_width;
        Acc sum = 0;
        for (int ph = element.ph0; ph < element.ph1; ++ph) {
            const int rows = ave_extent(ph * g.stride_h - g.pad_h, g.kernel_h, g.height, g.pad_h);
            for (int pw = element.pw0; pw < element.pw1; ++pw) {
                const int cols = ave_extent(pw * g.stride_w - g.pad_w, g.kernel_w, g.width, g.pad_w);
                sum += static_cast<Acc>(dy[ph * g.pooled_width + pw]) / static_cast<Acc>(rows * cols);
            }
        }
        bottom_diff[index] = static_cast<T>(sum);
    }
}

// --- C entry points, one per kernel and data type (loaded by name from CuPy) -----------
// count: the number of threads' work items, top elements for the forwards and bottom
// elements for the backwards.

extern "C" __global__ void max_pool_forward_f32(long long count, const float* bottom, POOL_GEOMETRY_PARAMS,
                                                float* top, int* mask) {
    max_pool_forward<float, true>(count, bottom, POOL_GEOMETRY, top, mask);
}
extern "C" __global__ void max_pool_forward_f64(long long count, const double* bottom, POOL_GEOMETRY_PARAMS,
                                                double* top, int* mask) {
    max_pool_forward<double, true>(count, bottom, POOL_GEOMETRY, top, mask);
}

extern "C" __global__ void max_pool_infer_f32(long long count, const float* bottom, POOL_GEOMETRY_PARAMS,
                                              float* top) {
    max_pool_forward<float, false>(count, bottom, POOL_GEOMETRY, top, nullptr);
}
extern "C" __global__ void max_pool_infer_f64(long long count, const double* bottom, POOL_GEOMETRY_PARAMS,
                                              double* top) {
    max_pool_forward<double, false>(count, bottom, POOL_GEOMETRY, top, nullptr);
}

extern "C" __global__ void max_pool_backward_f32(long long count, const float* top_diff, const int* mask,
                                                 POOL_GEOMETRY_PARAMS, float* bottom_diff) {
    max_pool_backward<float>(count, top_diff, mask, POOL_GEOMETRY, bottom_diff);
}
extern "C" __global__ void max_pool_backward_f64(long long count, const double* top_diff, const int* mask,
                                                 POOL_GEOMETRY_PARAMS, double* bottom_diff) {
    max_pool_backward<double>(count, top_diff, mask, POOL_GEOMETRY, bottom_diff);
}

extern "C" __global__ void ave_pool_forward_f32(long long count, const float* bottom, POOL_GEOMETRY_PARAMS,
                                                float* top) {
    ave_pool_forward<float>(count, bottom, POOL_GEOMETRY, top);
}
extern "C" __global__ void ave_pool_forward_f64(long long count, const double* bottom, POOL_GEOMETRY_PARAMS,
                                                double* top) {
    ave_pool_forward<double>(count, bottom, POOL_GEOMETRY, top);
}

extern "C" __global__ void ave_pool_backward_f32(long long count, const float* top_diff, POOL_GEOMETRY_PARAMS,
                                                 float* bottom_diff) {
    ave_pool_backward<float>(count, top_diff, POOL_GEOMETRY, bottom_diff);
}
extern "C" __global__ void ave_pool_backward_f64(long long count, const double* top_diff, POOL_GEOMETRY_PARAMS,
                                                 double* bottom_diff) {
    ave_pool_backward<double>(count, top_diff, POOL_GEOMETRY, bottom_diff);
}
