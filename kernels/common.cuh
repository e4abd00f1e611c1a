// What several kernels/*.cu files share, defined once. Included with #include "common.cuh":
// nvcc finds it beside the file; for NVRTC, which compiles one string, netc.runtime.cuda_kernels'
// kernel_source pastes it in place.
#ifndef NETC_KERNELS_COMMON_CUH
#define NETC_KERNELS_COMMON_CUH

// The type a kernel sums T in. Float sums are carried in double: the sums these kernels
// take (a 169-term global pool, a gradient gather, a running window that subtracts, a
// softmax normaliser, split partial sums) mix signs or cancel, and would lose the float
// result's digits; the extra adds hide under the memory latency of these bandwidth-bound
// kernels. Double sums in double (no wider type is fast on a GPU).
template <typename T> struct Accum { typedef T type; };
template <> struct Accum<float> { typedef double type; };

// int min and max for window bounds: CUDA's built-in min and max do not exist in the
// host build of the kernels (tests/kernel_cases.py), which compiles them as plain C++.
__device__ __forceinline__ int imin(int a, int b) { return a < b ? a : b; }
__device__ __forceinline__ int imax(int a, int b) { return a > b ? a : b; }

// A grid-stride loop, for (i = first_index(); i < count; i += grid_step()), lets any grid
// size cover any count: the host caps the blocks (MAX_BLOCKS) and each thread takes
// every grid_step()-th item. Both are 64-bit, as the loop index is: a count may pass 2^31.
__device__ __forceinline__ long long first_index() {
    return static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ long long grid_step() {
    return static_cast<long long>(blockDim.x) * gridDim.x;
}

// n / d by a multiply-high, an add and a shift, for the kernels that decode a flat
// index into coordinates every element: a GPU divides in software (some 20 instructions
// for 32 bits, more for 64), more work than the rest of a memory-bound element's. The
// host makes d's magic number m and shift s (netc.runtime.cuda_kernels.divider):
// 2^(s-1) < d <= 2^s, m = floor(2^32 (2^s - d) / d) + 1 (< 2^32), and then for
// 0 <= n < 2^31, n / d = (umulhi(n, m) + n) >> s (Granlund and Montgomery's round-up
// method; umulhi(n, m) < n keeps the sum inside 32 bits). Past 2^31 it divides.
struct Divider {
    int divisor;
    unsigned magic;
    int shift;

    __device__ __forceinline__ long long quotient(long long n) const {
        if (n < 0x80000000LL) {
            const unsigned u = static_cast<unsigned>(n);
            return static_cast<long long>((__umulhi(u, magic) + u) >> shift);
        }
        return n / divisor;
    }
};
// A Divider from its three kernel arguments (the magic number passed as an int's bits).
__device__ __forceinline__ Divider make_divider(int divisor, int magic, int shift) {
    return Divider{divisor, static_cast<unsigned>(magic), shift};
}

#endif  // NETC_KERNELS_COMMON_CUH
