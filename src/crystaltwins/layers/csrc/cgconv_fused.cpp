// Fused CPU kernels of CGCNN's gated convolution in training mode (batch statistics).
//
// For every edge e = (i, j) with band features (index[e, :], value[e, :]):
//   z_e   = h_i[i] + h_j[j] + sum_w value[e, w] * w_uT[index[e, w]]          (2C channels)
//   x_e   = (z_e - mean) * inv_std          mean, var over all edges (biased), BatchNorm1d
//   y_e   = gamma * x_e + beta = [f_e | c_e]
//   out_i = sum_{e: centre i} sigmoid(f_e) * softplus(c_e)                    (C channels)
// and the exact gradient of out with respect to h_i, h_j, w_uT, gamma and beta.
//
// Nothing per edge is kept between forward and backward: z costs ~W + 2 loads of 2C floats from
// small, cache-resident arrays, so recomputing it (and the gate) is cheaper than writing and
// reading back 5C floats per edge. The forward makes two passes over the edges (statistics;
// gate and sums), the backward one (its BatchNorm sums come from per-atom sums the forward
// leaves).
//
// Edges must be grouped by centre atom (ptr[i] .. ptr[i + 1] are the edges of atom i), so
// per-atom sums need no atomics. Reductions use per-thread partial sums combined in thread
// order: results depend on the thread count only through float rounding. Work is split by the
// size of the team OpenMP actually runs, which may be smaller than the one asked for.
// The caller checks indices and shapes (0 <= neighbour < N, 0 <= band index < K).
// Plain C ABI (raw pointers), loaded with ctypes; see fused_cgconv.py.

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr float kSoftplusThreshold = 20.0f;  // torch.nn.functional.softplus's default

// 16 floats as one value (GCC/Clang vector extension): one AVX-512 register, two AVX ones, four
// NEON ones. Loaded and stored with memcpy (no alignment needed).
typedef float Lanes __attribute__((vector_size(64)));
constexpr int64_t kLanes = 16;

inline Lanes load(const float* p) {
  Lanes v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline void store(float* p, Lanes v) { std::memcpy(p, &v, sizeof(v)); }

// z (2C) of edge e with centre i. Channels in blocks of 16 held in registers across the band.
inline void raw_edge(int64_t e, int64_t i, int64_t c2, int64_t w, const float* h_i,
                     const float* h_j, const float* w_ut, const int64_t* band_index,
                     const float* band_value, const int64_t* neighbour, float* z) {
  const float* a = h_i + i * c2;
  const float* b = h_j + neighbour[e] * c2;
  const int64_t* index = band_index + e * w;
  const float* value = band_value + e * w;
  int64_t k0 = 0;
  for (; k0 + 2 * kLanes <= c2; k0 += 2 * kLanes) {
    Lanes acc0 = load(a + k0) + load(b + k0);
    Lanes acc1 = load(a + k0 + kLanes) + load(b + k0 + kLanes);
    for (int64_t t = 0; t < w; ++t) {
      const float* r = w_ut + index[t] * c2 + k0;
      acc0 += value[t] * load(r);
      acc1 += value[t] * load(r + kLanes);
    }
    store(z + k0, acc0);
    store(z + k0 + kLanes, acc1);
  }
  for (; k0 < c2; ++k0) {
    float acc = a[k0] + b[k0];
    for (int64_t t = 0; t < w; ++t) acc += value[t] * w_ut[index[t] * c2 + k0];
    z[k0] = acc;
  }
}

// The activations of one edge from its raw value z (2C channels) with the BatchNorm folded into
// scale/shift: gate = sigmoid(f), core = softplus(c), core_slope = sigmoid(c), and x, the
// normalised value (z - mean) * inv_std, in place of z.
struct EdgeActivation {
  float gate, core, core_slope, x_f, x_c;
};

inline EdgeActivation activate(float zf, float zc, float mf, float mc, float isf, float isc,
                               float scf, float scc, float shf, float shc) {
  const float f = zf * scf + shf;
  const float cc = zc * scc + shc;
  const float sig = 1.0f / (1.0f + std::exp(std::min(-f, 80.0f)));
  const float ec = std::exp(std::min(cc, kSoftplusThreshold));
  const float sp = cc > kSoftplusThreshold ? cc : std::log(1.0f + ec);
  return {sig, sp, ec / (1.0f + ec), (zf - mf) * isf, (zc - mc) * isc};
}

// Static partition of [0, n) for thread t of nt.
inline void chunk(int64_t n, int t, int nt, int64_t* lo, int64_t* hi) {
  const int64_t q = n / nt, r = n % nt;
  *lo = t * q + std::min<int64_t>(t, r);
  *hi = *lo + q + (t < r ? 1 : 0);
}

// Atom range of thread t with about E / nt edges each (edges are what costs).
inline void atom_chunk(int64_t n, const int64_t* ptr, int t, int nt, int64_t* lo, int64_t* hi) {
  const int64_t e = ptr[n];
  auto first_atom = [&](int64_t edge) {
    return static_cast<int64_t>(std::lower_bound(ptr, ptr + n, edge) - ptr);
  };
  *lo = t == 0 ? 0 : first_atom(e * t / nt);
  *hi = t == nt - 1 ? n : first_atom(e * (t + 1) / nt);
}

}  // namespace

extern "C" {

int ct_cgconv_abi_version() { return 3; }

// Forward. Writes out (N, C), mean and var (2C, biased), and atom_sums (N, 4C): per atom the sums
// over its edges of  gate (1 - gate) core,  gate (1 - gate) core x_f,  gate core_slope  and
// gate core_slope x_c  (x: the normalised edge value), all the backward's BatchNorm sums need
// besides dL/dout. Nothing per edge is stored: the backward recomputes the edges (two passes
// over the edges here, one there, instead of writing and reading back 5C floats per edge).
void ct_cgconv_forward(int64_t n, int64_t e, int64_t c, int64_t w, const float* h_i,
                       const float* h_j, const float* w_ut, const int64_t* band_index,
                       const float* band_value, const int64_t* neighbour, const int64_t* ptr,
                       const float* gamma, const float* beta, float eps, float* out,
                       float* mean_out, float* var_out, float* atom_sums, int nthreads) {
  const int64_t c2 = 2 * c;
  const int nt = std::max(1, nthreads);
  std::vector<double> partial(static_cast<size_t>(nt) * 2 * c2, 0.0);
  std::vector<float> mean(c2), inv_std(c2), scale(c2), shift(c2);
  int team = 1;  // OpenMP may run fewer threads than asked (OMP_DYNAMIC, OMP_THREAD_LIMIT, ...)

  // 1. per-channel sums of the raw edge values and of their squares, shifted by the first
  //    edge's value (so that a large common offset does not cost precision)
  std::vector<float> origin(c2, 0.0f);
  if (e > 0) {
    const int64_t first = std::upper_bound(ptr, ptr + n + 1, int64_t{0}) - ptr - 1;
    raw_edge(0, first, c2, w, h_i, h_j, w_ut, band_index, band_value, neighbour, origin.data());
  }
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num(), tn = omp_get_num_threads();
#pragma omp single
    team = tn;
    int64_t lo, hi;
    atom_chunk(n, ptr, t, tn, &lo, &hi);
    double* s = partial.data() + t * 2 * c2;
    double* q = s + c2;
    const float* o = origin.data();
    std::vector<float> buffer(c2);
    float* z = buffer.data();
    for (int64_t i = lo; i < hi; ++i) {
      for (int64_t ed = ptr[i]; ed < ptr[i + 1]; ++ed) {
        raw_edge(ed, i, c2, w, h_i, h_j, w_ut, band_index, band_value, neighbour, z);
#pragma omp simd
        for (int64_t k = 0; k < c2; ++k) {
          const double d = static_cast<double>(z[k] - o[k]);
          s[k] += d;
          q[k] += d * d;
        }
      }
    }
  }
  for (int64_t k = 0; k < c2; ++k) {
    double total = 0.0, total_sq = 0.0;
    for (int t = 0; t < team; ++t) {
      total += partial[t * 2 * c2 + k];
      total_sq += partial[t * 2 * c2 + c2 + k];
    }
    const double shifted_mean = total / static_cast<double>(e);
    const double var = std::max(0.0, total_sq / static_cast<double>(e) - shifted_mean * shifted_mean);
    mean[k] = static_cast<float>(origin[k] + shifted_mean);
    mean_out[k] = mean[k];
    var_out[k] = static_cast<float>(var);
    inv_std[k] = 1.0f / std::sqrt(var_out[k] + eps);
    scale[k] = gamma[k] * inv_std[k];
    shift[k] = beta[k] - mean[k] * scale[k];
  }

  // 2. normalise, gate, sum over each atom's edges, and the backward's per-atom sums
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num(), tn = omp_get_num_threads();
    int64_t lo, hi;
    atom_chunk(n, ptr, t, tn, &lo, &hi);
    const float *m = mean.data(), *is = inv_std.data(), *sc = scale.data(), *sh = shift.data();
    std::vector<float> buffer(c2);
    float* z = buffer.data();
    for (int64_t i = lo; i < hi; ++i) {
      float* o = out + i * c;
      float* p = atom_sums + i * 4 * c;  // [gate' core | gate' core x_f | gate slope | ... x_c]
      std::memset(o, 0, sizeof(float) * c);
      std::memset(p, 0, sizeof(float) * 4 * c);
      for (int64_t ed = ptr[i]; ed < ptr[i + 1]; ++ed) {
        raw_edge(ed, i, c2, w, h_i, h_j, w_ut, band_index, band_value, neighbour, z);
#pragma omp simd
        for (int64_t k = 0; k < c; ++k) {
          const EdgeActivation a = activate(z[k], z[c + k], m[k], m[c + k], is[k], is[c + k],
                                            sc[k], sc[c + k], sh[k], sh[c + k]);
          o[k] += a.gate * a.core;
          const float df = a.gate * (1.0f - a.gate) * a.core;
          const float dc = a.gate * a.core_slope;
          p[k] += df;
          p[c + k] += df * a.x_f;
          p[2 * c + k] += dc;
          p[3 * c + k] += dc * a.x_c;
        }
      }
    }
  }
}

// Backward of ct_cgconv_forward given grad_out (N, C). Writes grad_h_i, grad_h_j (N, 2C),
// grad_w_ut (K, 2C), grad_gamma, grad_beta (2C). scratch: nthreads * (N + K) * 2C floats.
// mean and inv_std (2C) are the forward's batch statistics, atom_sums its per-atom sums.
void ct_cgconv_backward(int64_t n, int64_t e, int64_t c, int64_t k_features, int64_t w,
                        const float* grad_out, const float* h_i, const float* h_j,
                        const float* w_ut, const float* gamma, const float* beta,
                        const float* mean, const float* inv_std, const float* atom_sums,
                        const int64_t* band_index, const float* band_value,
                        const int64_t* neighbour, const int64_t* ptr, float* grad_h_i,
                        float* grad_h_j, float* grad_w_ut, float* grad_gamma, float* grad_beta,
                        float* scratch, int nthreads) {
  const int64_t c2 = 2 * c;
  const int nt = std::max(1, nthreads);
  std::vector<double> partial(static_cast<size_t>(nt) * 2 * c2, 0.0);
  int team = 1;

  // 1. per-channel sums over the edges of g = dL/dy and of g x: per atom, dL/dout times the
  //    forward's sums (g of an edge is dL/dout of its centre times a factor of the edge)
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num(), tn = omp_get_num_threads();
#pragma omp single
    team = tn;
    int64_t lo, hi;
    chunk(n, t, tn, &lo, &hi);
    double* sg = partial.data() + t * 2 * c2;
    double* sgx = sg + c2;
    for (int64_t i = lo; i < hi; ++i) {
      const float* go = grad_out + i * c;
      const float* p = atom_sums + i * 4 * c;
#pragma omp simd
      for (int64_t k = 0; k < c; ++k) {
        sg[k] += static_cast<double>(go[k]) * p[k];
        sgx[k] += static_cast<double>(go[k]) * p[c + k];
        sg[c + k] += static_cast<double>(go[k]) * p[2 * c + k];
        sgx[c + k] += static_cast<double>(go[k]) * p[3 * c + k];
      }
    }
  }
  std::vector<float> scale(c2), shift(c2), mean_g(c2), mean_gx(c2);
  for (int64_t k = 0; k < c2; ++k) {
    double total_g = 0.0, total_gx = 0.0;
    for (int t = 0; t < team; ++t) {
      total_g += partial[t * 2 * c2 + k];
      total_gx += partial[t * 2 * c2 + c2 + k];
    }
    grad_beta[k] = static_cast<float>(total_g);
    grad_gamma[k] = static_cast<float>(total_gx);
    scale[k] = gamma[k] * inv_std[k];
    shift[k] = beta[k] - mean[k] * scale[k];
    mean_g[k] = static_cast<float>(total_g / static_cast<double>(e));
    mean_gx[k] = static_cast<float>(total_gx / static_cast<double>(e));
  }

  // 2. dz = scale * (g - mean(g) - x * mean(g x)) of every edge, recomputed, scattered to the
  //    centre, the neighbour and the band features of the edge. Each thread sums its neighbour
  //    rows in its own scratch block, zeroing and combining only the rows its edges reach
  //    (crystals are contiguous, so that is about its own atom range).
  const int64_t rows = n + k_features;
  std::vector<int64_t> first_row(nt, 0), end_row(nt, 0);
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num(), tn = omp_get_num_threads();
    int64_t lo, hi;
    atom_chunk(n, ptr, t, tn, &lo, &hi);
    int64_t nb_lo = n, nb_hi = 0;
    for (int64_t ed = ptr[lo]; ed < ptr[hi]; ++ed) {
      nb_lo = std::min(nb_lo, neighbour[ed]);
      nb_hi = std::max(nb_hi, neighbour[ed] + 1);
    }
    if (nb_lo >= nb_hi) nb_lo = nb_hi = 0;
    first_row[t] = nb_lo;
    end_row[t] = nb_hi;
    float* own = scratch + t * rows * c2;  // (N, 2C) neighbour sums, then (K, 2C) band sums
    std::memset(own + nb_lo * c2, 0, sizeof(float) * (nb_hi - nb_lo) * c2);
    float* own_u = own + n * c2;
    std::memset(own_u, 0, sizeof(float) * k_features * c2);
    const float *m = mean, *is = inv_std, *sc = scale.data(), *sh = shift.data();
    const float *mg = mean_g.data(), *mgx = mean_gx.data();
    std::vector<float> buffer(2 * c2);
    float* z = buffer.data();
    float* d = z + c2;
    for (int64_t i = lo; i < hi; ++i) {
      float* gi = grad_h_i + i * c2;
      const float* go = grad_out + i * c;
      std::memset(gi, 0, sizeof(float) * c2);
      for (int64_t ed = ptr[i]; ed < ptr[i + 1]; ++ed) {
        raw_edge(ed, i, c2, w, h_i, h_j, w_ut, band_index, band_value, neighbour, z);
#pragma omp simd
        for (int64_t k = 0; k < c; ++k) {
          const EdgeActivation a = activate(z[k], z[c + k], m[k], m[c + k], is[k], is[c + k],
                                            sc[k], sc[c + k], sh[k], sh[c + k]);
          const float gf = go[k] * a.gate * (1.0f - a.gate) * a.core;
          const float gc = go[k] * a.gate * a.core_slope;
          d[k] = sc[k] * (gf - mg[k] - a.x_f * mgx[k]);
          d[c + k] = sc[c + k] * (gc - mg[c + k] - a.x_c * mgx[c + k]);
        }
        float* gj = own + neighbour[ed] * c2;
#pragma omp simd
        for (int64_t k = 0; k < c2; ++k) {
          gi[k] += d[k];
          gj[k] += d[k];
        }
        for (int64_t b = 0; b < w; ++b) {
          const float v = band_value[ed * w + b];
          float* gu = own_u + band_index[ed * w + b] * c2;
#pragma omp simd
          for (int64_t k = 0; k < c2; ++k) gu[k] += v * d[k];
        }
      }
    }
#pragma omp barrier
    // 3. combine the per-thread sums, rows split between the threads
    int64_t r0, r1;
    chunk(rows, t, tn, &r0, &r1);
    for (int64_t r = r0; r < r1; ++r) {
      float* dst = r < n ? grad_h_j + r * c2 : grad_w_ut + (r - n) * c2;
      std::memset(dst, 0, sizeof(float) * c2);
      for (int u = 0; u < tn; ++u) {
        if (r < n && (r < first_row[u] || r >= end_row[u])) continue;
        const float* src = scratch + (u * rows + r) * c2;
#pragma omp simd
        for (int64_t k = 0; k < c2; ++k) dst[k] += src[k];
      }
    }
  }
}

}  // extern "C"
