// Convolution with Caffe's geometry (netc/layers/conv.py is the reference), forward and
// backward, for float and double, as three implicit GEMMs per group g:
//
//   forward          y[g]  = W[g] · col(x)[g] (+ bias, then ReLU if asked)
//                    M = Co/g, N = N·OH·OW, K = C/g·kh·kw
//   backward data    dx[g] = W[g]ᵀ · dcol(dy)[g]
//                    M = C/g,  N = N·H·W,  K = Co/g·kh·kw
//   backward weights dW[g] = dy[g] · col(x)[g]ᵀ            (db: its own reduction)
//                    M = Co/g, N = C/g·kh·kw, K = N·OH·OW
//
// col(x)[k, column] = x[n, g·C/g + c, oh·sh − ph + i·dh, ow·sw − pw + j·dw] (zero in the
// padding), k = (c·kh + i)·kw + j, column = (n·OH + oh)·OW + ow: im2col's matrix, which
// is never written out. dcol(dy)[(co, i, j), (n, h, w)] is dy at the output pixel whose
// window puts tap (i, j) on (h, w): oh = (h + ph − i·dh) / sh when that divides exactly
// and lands inside the output, else zero; so the backward data is a GATHER, each dx
// element computed once by one thread (no col2im, no atomics).
// The host passes the geometry exactly as netc.layers.conv computes it (output size,
// pad, stride, dilation, group), so this file holds no defaults.
//
// Tiling and memory-access plan. All three are one tiled GEMM (tile_product) over
// operands that are gathered from the tensors on the fly:
//   - A block of CONV_THREADS = 256 threads owns a TILE × TILE = 64 × 64 output tile and
//     walks K in steps of TILE_K = 16. Each step stages a 64 × 16 slice of A and a
//     16 × 64 slice of B in shared memory, [TILE_K][TILE + 4]: the 4 padding words put
//     a warp's transposing stores (16 k at one row) into 2 wavefronts instead of 16 and
//     keep every row 16-byte aligned. Each thread loads 4 elements of each slice.
//     Thread (tm, tn) of the 16 × 16 thread grid then accumulates a 4 × 4 register
//     micro-tile, rows 4tm … 4tm + 3 and columns 4tn … 4tn + 3: four consecutive words of
//     a slice row each, which one 128-bit shared load reads. Per K index a warp issues
//     two shared loads for its 16 multiply-adds per thread: A's are 8 words broadcast
//     (one wavefront), B's 64 consecutive words (two, the least for 256 bytes), so per
//     K index a block's 8 warps take 24 shared-memory clocks against 32 FMA clocks (an
//     SM issues one wavefront and four warp FMAs per clock). With one scalar load per
//     row and column (rows tm + 16i; 8 wavefronts per warp) it was 64 against 32: the
//     shared-memory pipe held the FMAs to half their rate.
//   - The next step's global loads are issued into registers before the current step's
//     arithmetic (one barrier pair per step), so their latency hides under the FMAs.
//   - Which index consecutive threads take when loading is chosen per operand for
//     coalescing: along k for the weights (rows of K contiguous values) and for the
//     backward weights' operands (k runs along the output row ow); along the output
//     column for the forward's and the backward data's gathers (consecutive ow, or w,
//     which read x, or dy, at stride sw, or unit stride). Either way one of a thread's
//     two indices stays fixed while it loads. Both are decoded once per tile (the
//     divisions that give n, oh, ow or c, i, j); from one K step to the next a thread's
//     reduction indices move by TILE_K, which is added digit by digit (MixedRadix), so
//     the K loop divides only where the backward data tests a stride other than 1 × 1
//     (stride 1 × 1 has its own entry point). What each thread then holds (16
//     accumulators, 8 staged values, its Rows and Terms) takes about 128 registers in
//     float (ptxas, sm_90): 2 blocks, 16 warps, per SM. Held to 3 blocks (85 registers)
//     it spills.
//   - The backward data's K loop visits every (co, i, j); with stride s > 1 only about
//     1/(sh·sw) of those taps land on an output pixel, the rest gather zeros. Splitting
//     the input pixels by their residue mod the stride would skip them; left for when
//     a net needs dx of a strided layer fast (AlexNet's stride-4 conv1 needs none).
//   - Every load is bounds-checked against M, N and K (zero outside) and every store
//     against M and N: any channel count, batch 1, odd sizes and stride > kernel work.
//   - Tiles are numbered with the M tile fastest (blocks running together share the
//     same gathered input columns in L2) and visited by a block-stride loop, so any
//     grid size computes everything.
//   - Backward weights reduces over the long N·OH·OW axis. When the output tiles are
//     too few to fill the device (early layers: 96 × 363 weights, 774k pixels), the host
//     splits K into `splits` contiguous ranges of `split_depth` (a multiple of TILE_K);
//     split s writes its partial product to partial[s] and conv_reduce_splits adds them
//     in split order. With one split the product goes straight to dW. db is
//     conv_backward_bias: one block per output channel sums dy over N·OH·OW (coalesced
//     along the plane) with a fixed-shape tree in shared memory. No atomics anywhere:
//     every result is the same bit for bit from run to run.
// The products accumulate in the data type (a GEMM's usual choice; float's rounding
// grows with √K); db and the split sums accumulate float in double.
// Indices that span a tensor are 64-bit; channel, row and tile indices are 32-bit.

#include "common.cuh"

constexpr int CONV_THREADS = 256;   // threads per block: the launch must use exactly this many
constexpr int TILE = 64;            // output tile: TILE rows (M) × TILE columns (N)
constexpr int TILE_K = 16;          // K per shared-memory step
constexpr int MICRO = 4;            // each thread's register tile: MICRO × MICRO
constexpr int THREAD_GRID = TILE / MICRO;                      // 16 × 16 threads
constexpr int LOADS = TILE * TILE_K / CONV_THREADS;            // elements a thread stages per operand
constexpr int SLICE_ROW = TILE + 4;     // a shared slice's row: padded, yet 16-byte aligned
static_assert(THREAD_GRID * THREAD_GRID == CONV_THREADS, "one micro-tile per thread");
static_assert(LOADS * CONV_THREADS == TILE * TILE_K, "the threads stage a whole slice");
static_assert(CONV_THREADS % TILE == 0 && CONV_THREADS % TILE_K == 0, "fixed index per loading thread");
static_assert(MICRO == 4 && SLICE_ROW % 4 == 0, "a micro-tile row is one 128-bit shared load");

__device__ __forceinline__ int ceil_div(int a, int b) { return (a + b - 1) / b; }
__device__ __forceinline__ bool inside(int i, int size) {
    return static_cast<unsigned>(i) < static_cast<unsigned>(size);
}
__device__ __forceinline__ int thread_index() { return static_cast<int>(threadIdx.x); }
// The tile row of row i of the thread's micro-tile, and the tile column of its column j.
__device__ __forceinline__ int micro_row(int tid, int i) { return tid / THREAD_GRID * MICRO + i; }
__device__ __forceinline__ int micro_column(int tid, int j) { return tid % THREAD_GRID * MICRO + j; }

// The geometry every convolution kernel takes, as plain int arguments (one numpy.int32
// each from the host), gathered here.
struct ConvGeometry {
    int batch, channels, height, width;              // the input N, C, H, W
    int out_channels, out_height, out_width;         // Co, OH, OW
    int kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
    int group;

    __device__ int in_group() const { return channels / group; }          // C/g
    __device__ int out_group() const { return out_channels / group; }     // Co/g
    __device__ int taps() const { return kernel_h * kernel_w; }
    __device__ long long plane() const { return static_cast<long long>(height) * width; }
    __device__ long long out_plane() const { return static_cast<long long>(out_height) * out_width; }
};
#define CONV_GEOMETRY_PARAMS                                                                 \
    int batch, int channels, int height, int width, int out_channels, int out_height,         \
        int out_width, int kernel_h, int kernel_w, int stride_h, int stride_w, int pad_h,     \
        int pad_w, int dilation_h, int dilation_w, int group
#define CONV_GEOMETRY                                                                        \
    ConvGeometry { batch, channels, height, width, out_channels, out_height, out_width,        \
                   kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,           \
                   dilation_w, group }

// --- reduction indices without divisions ------------------------------------------------
// A gather's reduction index k is a mixed-radix number of three digits,
// k = (outer · middle_size + middle) · inner_size + inner: (c, i, j) of a tap, (n, oh, ow)
// of an output pixel. Decoding k takes divisions, which a GPU does in software (some 20
// instructions each, a 64-bit one more: as many as a K step's multiply-adds when every
// load decoded its own k). A thread's k moves by TILE_K each K step, so it is decoded
// once per tile and then advanced by adding TILE_K's own digits; a digit plus a digit
// plus a carry stays below twice its radix, so one compare carries it.
struct Digits {
    int outer, middle, inner;
};
struct MixedRadix {
    int middle_size, inner_size;
    Digits step;                                    // TILE_K as digits

    __device__ Digits of(long long k) const {
        const long long rest = k / inner_size;
        return Digits{static_cast<int>(rest / middle_size), static_cast<int>(rest % middle_size),
                      static_cast<int>(k % inner_size)};
    }
    __device__ __forceinline__ void advance(Digits& d) const {
        d.inner += step.inner;
        int carry = d.inner >= inner_size ? 1 : 0;
        d.inner -= carry * inner_size;
        d.middle += step.middle + carry;
        carry = d.middle >= middle_size ? 1 : 0;
        d.middle -= carry * middle_size;
        d.outer += step.outer + carry;
    }
};
__device__ __forceinline__ MixedRadix mixed_radix(int middle_size, int inner_size) {
    MixedRadix radix{middle_size, inner_size, Digits{0, 0, 0}};
    radix.step = radix.of(TILE_K);
    return radix;
}

// --- the tile product ------------------------------------------------------------------
// An operand is a Gather: row(r) decodes one of its 64 tile rows (an M index of A, an N
// index of B) into a Row, term(k) one reduction index into a Term, advance(Term&) moves a
// Term TILE_K further along K, at(Row, Term) is the value, zero where either is out of
// range or the tap falls in the padding.

// One operand's slice of a K step, staged through registers into shared memory.
// K_FASTEST: thread t loads k = t % TILE_K of rows t / TILE_K + 16 l (one Term, LOADS
// Rows); else row t % TILE at k = t / TILE + 4 l (one Row, LOADS Terms). Rows and Terms
// are decoded once per tile (begin); fetch advances the Terms to the next K step.
template <typename T, typename Gather, bool K_FASTEST>
struct StagedSlice {
    // how far apart a thread's LOADS elements lie: rows (K_FASTEST) or k (otherwise)
    static constexpr int STRIDE = K_FASTEST ? CONV_THREADS / TILE_K : CONV_THREADS / TILE;
    typename Gather::Row rows[K_FASTEST ? LOADS : 1];
    typename Gather::Term terms[K_FASTEST ? 1 : LOADS];
    T values[LOADS];

    __device__ __forceinline__ void begin(const Gather& gather, int row0, long long k0, int tid) {
        if constexpr (K_FASTEST) {
            for (int l = 0; l < LOADS; ++l) {
                rows[l] = gather.row(row0 + tid / TILE_K + l * STRIDE);
            }
            terms[0] = gather.term(k0 + tid % TILE_K);
        } else {
            rows[0] = gather.row(row0 + tid % TILE);
            for (int l = 0; l < LOADS; ++l) {
                terms[l] = gather.term(k0 + tid / TILE + l * STRIDE);
            }
        }
    }

    // the values at the Terms, which then move on to the next K step
    __device__ __forceinline__ void fetch(const Gather& gather) {
        if constexpr (K_FASTEST) {
#pragma unroll
            for (int l = 0; l < LOADS; ++l) {
                values[l] = gather.at(rows[l], terms[0]);
            }
            gather.advance(terms[0]);
        } else {
#pragma unroll
            for (int l = 0; l < LOADS; ++l) {
                values[l] = gather.at(rows[0], terms[l]);
                gather.advance(terms[l]);
            }
        }
    }

    __device__ __forceinline__ void store(T (*slice)[SLICE_ROW], int tid) const {
#pragma unroll
        for (int l = 0; l < LOADS; ++l) {
            if constexpr (K_FASTEST) {
                slice[tid % TILE_K][tid / TILE_K + l * STRIDE] = values[l];
            } else {
                slice[tid / TILE + l * STRIDE][tid % TILE] = values[l];
            }
        }
    }
};

// acc[i][j] = Σ_{k_begin ≤ k < k_end} A[m0 + micro_row(t, i), k] · B[k, n0 + micro_column(t, j)]
// for thread t. k_begin is a multiple of TILE_K; so is k_end unless it is
// the operands' own K (where the gathers give zeros past the end). Every thread of the
// block must call it with the same arguments (it holds barriers).
template <typename T, bool A_K_FASTEST, bool B_K_FASTEST, typename GatherA, typename GatherB>
__device__ __forceinline__ void tile_product(const GatherA& ga, const GatherB& gb, int m0, int n0,
                                             long long k_begin, long long k_end, T (&acc)[MICRO][MICRO]) {
    alignas(16) __shared__ T a_slice[TILE_K][SLICE_ROW];
    alignas(16) __shared__ T b_slice[TILE_K][SLICE_ROW];
    const int tid = thread_index();
    const int row0 = micro_row(tid, 0), column0 = micro_column(tid, 0);
    for (int i = 0; i < MICRO; ++i) {
        for (int j = 0; j < MICRO; ++j) {
            acc[i][j] = T(0);
        }
    }
    StagedSlice<T, GatherA, A_K_FASTEST> a;
    StagedSlice<T, GatherB, B_K_FASTEST> b;
    a.begin(ga, m0, k_begin, tid);
    b.begin(gb, n0, k_begin, tid);
    if (k_begin < k_end) {
        a.fetch(ga);
        b.fetch(gb);
    }
    for (long long k0 = k_begin; k0 < k_end; k0 += TILE_K) {
        a.store(a_slice, tid);
        b.store(b_slice, tid);
        __syncthreads();
        if (k0 + TILE_K < k_end) {          // the next step's loads, in flight during the FMAs
            a.fetch(ga);
            b.fetch(gb);
        }
#pragma unroll
        for (int kk = 0; kk < TILE_K; ++kk) {
            T av[MICRO], bv[MICRO];
#pragma unroll
            for (int i = 0; i < MICRO; ++i) {
                av[i] = a_slice[kk][row0 + i];
            }
#pragma unroll
            for (int j = 0; j < MICRO; ++j) {
                bv[j] = b_slice[kk][column0 + j];
            }
#pragma unroll
            for (int i = 0; i < MICRO; ++i) {
#pragma unroll
                for (int j = 0; j < MICRO; ++j) {
                    acc[i][j] += av[i] * bv[j];
                }
            }
        }
        __syncthreads();                    // the slices are rewritten next step
    }
}

// A tile number as (m tile, n tile, group, split), the m tile fastest.
struct TileIndex {
    int m0, n0, group, split;
};
__device__ __forceinline__ TileIndex decode_tile(long long tile, int m_tiles, int n_tiles, int groups) {
    TileIndex t;
    t.m0 = static_cast<int>(tile % m_tiles) * TILE;
    tile /= m_tiles;
    t.n0 = static_cast<int>(tile % n_tiles) * TILE;
    tile /= n_tiles;
    t.group = static_cast<int>(tile % groups);
    t.split = static_cast<int>(tile / groups);
    return t;
}

// --- the gathers -----------------------------------------------------------------------

// What every gather but MatrixRows shares: the geometry, and a reduction index held as
// digits of `radix` (taps (c, i, j) or output pixels (n, oh, ow)).
struct DigitGather {
    ConvGeometry geo;
    MixedRadix radix;
    typedef Digits Term;
    __device__ Term term(long long k) const { return radix.of(k); }
    __device__ void advance(Term& t) const { radix.advance(t); }
};

// Rows of a row-major matrix with `depth` columns: the forward's A (W[g] as
// Co/g × C/g·kh·kw). p points at the group's first row.
template <typename T>
struct MatrixRows {
    const T* p;
    int rows;
    long long depth;
    struct Row { long long offset; bool ok; };
    struct Term { long long k; };
    __device__ Row row(int r) const { return Row{r * depth, r < rows}; }
    __device__ Term term(long long k) const { return Term{k}; }
    __device__ void advance(Term& t) const { t.k += TILE_K; }
    __device__ T at(const Row& r, const Term& t) const { return r.ok && t.k < depth ? p[r.offset + t.k] : T(0); }
};

// The forward's B: col(x)[g], K = C/g·kh·kw rows (taps (c, i, j)) by N·OH·OW columns
// (output pixels). x points at group g's first channel of image 0; radix = mixed_radix(kh, kw).
template <typename T>
struct InputColumns : DigitGather {
    const T* x;
    struct Row { long long offset; int h0, w0; bool ok; };   // an output pixel: image, window origin
    __device__ Row row(int column) const {
        const long long pixels = geo.out_plane();
        const int n = static_cast<int>(column / pixels);
        const int p = static_cast<int>(column % pixels);
        return Row{static_cast<long long>(n) * geo.channels * geo.plane(),
                   (p / geo.out_width) * geo.stride_h - geo.pad_h, (p % geo.out_width) * geo.stride_w - geo.pad_w,
                   column < geo.batch * pixels};
    }
    __device__ T at(const Row& r, const Term& t) const {
        const int h = r.h0 + t.middle * geo.dilation_h, w = r.w0 + t.inner * geo.dilation_w;
        return r.ok && t.outer < geo.in_group() && inside(h, geo.height) && inside(w, geo.width)
                   ? x[r.offset + t.outer * geo.plane() + static_cast<long long>(h) * geo.width + w]
                   : T(0);
    }
};

// The backward data's A: W[g]ᵀ, C/g rows by Co/g·kh·kw (k: (co, i, j)). w points at
// group g's first filter; radix = mixed_radix(kh, kw).
template <typename T>
struct TransposedWeights : DigitGather {
    const T* w;
    struct Row { long long offset; bool ok; };
    __device__ Row row(int c) const { return Row{static_cast<long long>(c) * geo.taps(), c < geo.in_group()}; }
    __device__ T at(const Row& r, const Term& t) const {
        return r.ok && t.outer < geo.out_group()
                   ? w[r.offset + static_cast<long long>(t.outer) * geo.in_group() * geo.taps() +
                       t.middle * geo.kernel_w + t.inner]
                   : T(0);
    }
};

// The backward data's B: dcol(dy)[g], Co/g·kh·kw rows (k: (co, i, j)) by N·H·W columns
// (input pixels). dy points at group g's first output channel of image 0; radix =
// mixed_radix(kh, kw). UNIT_STRIDE: the geometry's stride is 1 × 1, so the tests of
// divisibility by it (four software divisions per element) are known to pass.
template <typename T, bool UNIT_STRIDE>
struct OutputDiffColumns : DigitGather {
    const T* dy;
    struct Row { long long offset; int hp, wp; bool ok; };   // an input pixel, shifted by the pad
    __device__ Row row(int column) const {
        const long long plane = geo.plane();
        const int n = static_cast<int>(column / plane);
        const int p = static_cast<int>(column % plane);
        return Row{static_cast<long long>(n) * geo.out_channels * geo.out_plane(),
                   p / geo.width + geo.pad_h, p % geo.width + geo.pad_w, column < geo.batch * plane};
    }
    __device__ T at(const Row& r, const Term& t) const {
        // the output pixel whose window puts this tap on the input pixel, if any:
        // oh·sh − ph + i·dh = h  ⇔  oh = (h + ph − i·dh) / sh, exactly
        const int th = r.hp - t.middle * geo.dilation_h, tw = r.wp - t.inner * geo.dilation_w;
        if (!(r.ok && t.outer < geo.out_group()) || th < 0 || tw < 0) {
            return T(0);
        }
        if (!UNIT_STRIDE && (th % geo.stride_h != 0 || tw % geo.stride_w != 0)) {
            return T(0);
        }
        const int oh = UNIT_STRIDE ? th : th / geo.stride_h, ow = UNIT_STRIDE ? tw : tw / geo.stride_w;
        return oh < geo.out_height && ow < geo.out_width
                   ? dy[r.offset + t.outer * geo.out_plane() + static_cast<long long>(oh) * geo.out_width + ow]
                   : T(0);
    }
};

// The backward weights' A: dy[g] as Co/g rows by N·OH·OW (k: (n, oh, ow)). dy points at
// group g's first output channel of image 0; radix = mixed_radix(OH, OW).
template <typename T>
struct OutputDiffRows : DigitGather {
    const T* dy;
    struct Row { long long offset; bool ok; };
    __device__ Row row(int co) const { return Row{co * geo.out_plane(), co < geo.out_group()}; }
    __device__ T at(const Row& r, const Term& t) const {
        return r.ok && t.outer < geo.batch
                   ? dy[r.offset + static_cast<long long>(t.outer) * geo.out_channels * geo.out_plane() +
                        t.middle * geo.out_width + t.inner]
                   : T(0);
    }
};

// The backward weights' B: col(x)[g]ᵀ, N·OH·OW rows (output pixels (n, oh, ow)) by
// C/g·kh·kw columns (taps). x points at group g's first channel of image 0; radix =
// mixed_radix(OH, OW).
template <typename T>
struct InputColumnsTransposed : DigitGather {
    const T* x;
    struct Row { long long offset; int dh, dw; bool ok; };   // a tap: channel, offsets less the pad
    __device__ Row row(int column) const {
        const int taps = geo.taps();
        const int c = column / taps, tap = column % taps;
        return Row{c * geo.plane(), (tap / geo.kernel_w) * geo.dilation_h - geo.pad_h,
                   (tap % geo.kernel_w) * geo.dilation_w - geo.pad_w, column < geo.in_group() * taps};
    }
    __device__ T at(const Row& r, const Term& t) const {
        const int h = t.middle * geo.stride_h + r.dh, w = t.inner * geo.stride_w + r.dw;
        return r.ok && t.outer < geo.batch && inside(h, geo.height) && inside(w, geo.width)
                   ? x[static_cast<long long>(t.outer) * geo.channels * geo.plane() + r.offset +
                       static_cast<long long>(h) * geo.width + w]
                   : T(0);
    }
};

// --- the kernels -----------------------------------------------------------------------

// y = conv(x) + bias (has_bias), then max(y, 0) (relu): the bias and ReLU in the epilogue,
// so y is written once.
template <typename T>
__device__ __forceinline__ void conv_forward(const T* __restrict__ x, const T* __restrict__ w,
                                             const T* __restrict__ bias, int has_bias, int relu,
                                             ConvGeometry geo, T* __restrict__ y) {
    const int cog = geo.out_group(), cg = geo.in_group();
    const long long depth = static_cast<long long>(cg) * geo.taps();
    const long long pixels = geo.out_plane();
    const int columns = static_cast<int>(geo.batch * pixels);
    const int m_tiles = ceil_div(cog, TILE), n_tiles = ceil_div(columns, TILE);
    const long long tiles = static_cast<long long>(m_tiles) * n_tiles * geo.group;
    const int tid = thread_index();
    const MixedRadix tap_digits = mixed_radix(geo.kernel_h, geo.kernel_w);
    for (long long tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        const TileIndex at = decode_tile(tile, m_tiles, n_tiles, geo.group);
        const MatrixRows<T> a{w + at.group * cog * depth, cog, depth};
        const InputColumns<T> b{{geo, tap_digits}, x + at.group * cg * geo.plane()};
        T acc[MICRO][MICRO];
        tile_product<T, true, false>(a, b, at.m0, at.n0, 0, depth, acc);
        for (int j = 0; j < MICRO; ++j) {
            const int column = at.n0 + micro_column(tid, j);
            if (column >= columns) {
                continue;
            }
            const long long n = column / pixels, p = column % pixels;
            for (int i = 0; i < MICRO; ++i) {
                const int m = at.m0 + micro_row(tid, i);
                if (m >= cog) {
                    continue;
                }
                const int co = at.group * cog + m;
                T v = acc[i][j];
                if (has_bias) {
                    v += bias[co];
                }
                if (relu && v < T(0)) {     // Caffe's max(v, 0): NaN stays NaN
                    v = T(0);
                }
                y[(n * geo.out_channels + co) * pixels + p] = v;
            }
        }
    }
}

// dx = Σ over the filters and taps that see each input pixel of w · dy.
// UNIT_STRIDE: the geometry's stride is 1 × 1 (the host's choice of entry point).
template <typename T, bool UNIT_STRIDE>
__device__ __forceinline__ void conv_backward_data(const T* __restrict__ dy, const T* __restrict__ w,
                                                   ConvGeometry geo, T* __restrict__ dx) {
    const int cog = geo.out_group(), cg = geo.in_group(), taps = geo.taps();
    const long long depth = static_cast<long long>(cog) * taps;
    const long long plane = geo.plane();
    const int columns = static_cast<int>(geo.batch * plane);
    const int m_tiles = ceil_div(cg, TILE), n_tiles = ceil_div(columns, TILE);
    const long long tiles = static_cast<long long>(m_tiles) * n_tiles * geo.group;
    const int tid = thread_index();
    const MixedRadix tap_digits = mixed_radix(geo.kernel_h, geo.kernel_w);
    for (long long tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        const TileIndex at = decode_tile(tile, m_tiles, n_tiles, geo.group);
        const TransposedWeights<T> a{{geo, tap_digits}, w + static_cast<long long>(at.group) * cog * cg * taps};
        const OutputDiffColumns<T, UNIT_STRIDE> b{{geo, tap_digits}, dy + at.group * cog * geo.out_plane()};
        T acc[MICRO][MICRO];
        tile_product<T, true, false>(a, b, at.m0, at.n0, 0, depth, acc);
        for (int j = 0; j < MICRO; ++j) {
            const int column = at.n0 + micro_column(tid, j);
            if (column >= columns) {
                continue;
            }
            const long long n = column / plane, p = column % plane;
            for (int i = 0; i < MICRO; ++i) {
                const int c = at.m0 + micro_row(tid, i);
                if (c < cg) {
                    dx[(n * geo.channels + at.group * cg + c) * plane + p] = acc[i][j];
                }
            }
        }
    }
}

// dW = Σ_pixels dy · col(x)ᵀ over K range [s·split_depth, (s+1)·split_depth) of split s,
// written to out[s] (out[0] is dW itself when there is one split): out is
// [splits, Co, C/g·kh·kw], dW's own layout per split.
template <typename T>
__device__ __forceinline__ void conv_backward_weights(const T* __restrict__ x, const T* __restrict__ dy,
                                                      ConvGeometry geo, int splits, long long split_depth,
                                                      T* __restrict__ out) {
    const int cog = geo.out_group(), cg = geo.in_group();
    const int columns = cg * geo.taps();
    const long long depth = geo.batch * geo.out_plane();
    const int m_tiles = ceil_div(cog, TILE), n_tiles = ceil_div(columns, TILE);
    const long long tiles = static_cast<long long>(m_tiles) * n_tiles * geo.group * splits;
    const int tid = thread_index();
    const MixedRadix pixel_digits = mixed_radix(geo.out_height, geo.out_width);
    for (long long tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        const TileIndex at = decode_tile(tile, m_tiles, n_tiles, geo.group);
        const OutputDiffRows<T> a{{geo, pixel_digits}, dy + at.group * cog * geo.out_plane()};
        const InputColumnsTransposed<T> b{{geo, pixel_digits}, x + at.group * cg * geo.plane()};
        const long long k_begin = at.split * split_depth;
        const long long k_end = k_begin + split_depth < depth ? k_begin + split_depth : depth;
        T acc[MICRO][MICRO];
        tile_product<T, true, true>(a, b, at.m0, at.n0, k_begin, k_end, acc);
        T* part = out + (static_cast<long long>(at.split) * geo.out_channels + at.group * cog) * columns;
        for (int i = 0; i < MICRO; ++i) {
            const int m = at.m0 + micro_row(tid, i);
            if (m >= cog) {
                continue;
            }
            for (int j = 0; j < MICRO; ++j) {
                const int column = at.n0 + micro_column(tid, j);
                if (column < columns) {
                    part[static_cast<long long>(m) * columns + column] = acc[i][j];
                }
            }
        }
    }
}

// dW[e] = Σ_s partial[s][e] in split order: one thread per weight, grid-stride.
template <typename T>
__device__ __forceinline__ void conv_reduce_splits(long long count, const T* __restrict__ partial, int splits,
                                                   T* __restrict__ dw) {
    typedef typename Accum<T>::type Acc;
    for (long long index = first_index(); index < count; index += grid_step()) {
        Acc sum = 0;
        for (int s = 0; s < splits; ++s) {
            sum += static_cast<Acc>(partial[s * count + index]);
        }
        dw[index] = static_cast<T>(sum);
    }
}

// db[co] = Σ_{n, pixel} dy[n, co, pixel]: one block per channel (block-stride), each
// thread a strided partial sum along the plane (coalesced), then a fixed tree.
template <typename T>
__device__ __forceinline__ void conv_backward_bias(const T* __restrict__ dy, int batch, int out_channels,
                                                   long long pixels, T* __restrict__ db) {
    typedef typename Accum<T>::type Acc;
    __shared__ Acc partial[CONV_THREADS];
    const int tid = thread_index();
    const long long total = batch * pixels;
    for (int co = blockIdx.x; co < out_channels; co += gridDim.x) {
        Acc sum = 0;
        for (long long k = tid; k < total; k += CONV_THREADS) {
            sum += static_cast<Acc>(dy[((k / pixels) * out_channels + co) * pixels + k % pixels]);
        }
        partial[tid] = sum;
        __syncthreads();
        for (int half = CONV_THREADS / 2; half > 0; half /= 2) {
            if (tid < half) {
                partial[tid] += partial[tid + half];
            }
            __syncthreads();
        }
        if (tid == 0) {
            db[co] = static_cast<T>(partial[0]);
        }
        __syncthreads();                    // partial[0] is read before the next channel's stores
    }
}

// --- C entry points, one per kernel and data type (loaded by name from CuPy) -----------
// Launch with CONV_THREADS threads per block (conv_reduce_splits: any block size). An
// unused bias pointer may be any array (has_bias = 0 never reads it).

extern "C" __global__ void __launch_bounds__(CONV_THREADS)
    conv_forward_f32(const float* x, const float* w, const float* bias, int has_bias, int relu,
                     CONV_GEOMETRY_PARAMS, float* y) {
    conv_forward<float>(x, w, bias, has_bias, relu, CONV_GEOMETRY, y);
}
extern "C" __global__ void __launch_bounds__(CONV_THREADS)
    conv_forward_f64(const double* x, const double* w, const double* bias, int has_bias, int relu,
                     CONV_GEOMETRY_PARAMS, double* y) {
    conv_forward<double>(x, w, bias, has_bias, relu, CONV_GEOMETRY, y);
}

// conv_backward_data_unit_*: for stride 1 × 1 only (every backward data of AlexNet and
// GoogLeNet), which needs no divisions by the stride.
extern "C" __global__ void __launch_bounds__(CONV_THREADS)
    conv_backward_data_f32(const float* dy, const float* w, CONV_GEOMETRY_PARAMS, float* dx) {
    conv_backward_data<float, false>(dy, w, CONV_GEOMETRY, dx);
}
extern "C" __global__ void __launch_bounds__(CONV_THREADS)
    conv_backward_data_f64(const double* dy, const double* w, CONV_GEOMETRY_PARAMS, double* dx) {
    conv_backward_data<double, false>(dy, w, CONV_GEOMETRY, dx);
}
extern "C" __global__ void __launch_bounds__(CONV_THREADS)
    conv_backward_data_unit_f32(const float* dy, const float* w, CONV_GEOMETRY_PARAMS, float* dx) {
    conv_backward_data<float, true>(dy, w, CONV_GEOMETRY, dx);
}
extern "C" __global__ void __launch_bounds__(CONV_THREADS)
    conv_backward_data_unit_f64(const double* dy, const double* w, CONV_GEOMETRY_PARAMS, double* dx) {
    conv_backward_data<double, true>(dy, w, CONV_GEOMETRY, dx);
}

extern "C" __global__ void __launch_bounds__(CONV_THREADS)
    conv_backward_weights_f32(const float* x, const float* dy, CONV_GEOMETRY_PARAMS, int splits,
                              long long split_depth, float* out) {
    conv_backward_weights<float>(x, dy, CONV_GEOMETRY, splits, split_depth, out);
}
extern "C" __global__ void __launch_bounds__(CONV_THREADS)
    conv_backward_weights_f64(const double* x, const double* dy, CONV_GEOMETRY_PARAMS, int splits,
                              long long split_depth, double* out) {
    conv_backward_weights<double>(x, dy, CONV_GEOMETRY, splits, split_depth, out);
}

extern "C" __global__ void conv_reduce_splits_f32(long long count, const float* partial, int splits, float* dw) {
    conv_reduce_splits<float>(count, partial, splits, dw);
}
extern "C" __global__ void conv_reduce_splits_f64(long long count, const double* partial, int splits,
                                                  double* dw) {
    conv_reduce_splits<double>(count, partial, splits, dw);
}

extern "C" __global__ void __launch_bounds__(CONV_THREADS)
    conv_backward_bias_f32(const float* dy, int batch, int out_channels, long long pixels, float* db) {
    conv_backward_bias<float>(dy, batch, out_channels, pixels, db);
}
extern "C" __global__ void __launch_bounds__(CONV_THREADS)
    conv_backward_bias_f64(const double* dy, int batch, int out_channels, long long pixels, double* db) {
    conv_backward_bias<double>(dy, batch, out_channels, pixels, db);
}
