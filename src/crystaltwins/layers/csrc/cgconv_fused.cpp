// Fused CPU kernels of CGCNN's gated convolution in training mode (batch statistics).
//
// For every edge e = (i, j) with band features (index[e, :], value[e, :]):
//   z_e   = h_i[i] + h_j[j] + sum_w value[e, w] * w_uT[index[e, w]]          (2C channels)
//   x_e   = (z_e - mean) * inv_std          mean, var over all edges (biased), BatchNorm1d
//   y_e   = gamma * x_e + beta = [f_e | c_e]
//   out_i = sum_{e: centre i} sigmoid(f_e) * softplus(c_e)                    (C channels)
// and the exact gradient of out with respect to h_i, h_j, w_uT, gamma and beta.
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

inline void raw_edge(int64_t e, int64_t i, int64_t c2, int64_t w, const float* h_i,
                     const float* h_j, const float* w_ut, const int64_t* band_index,
                     const float* band_value, const int64_t* neighbour, float* z) {
  const float* a = h_i + i * c2;
  const float* b = h_j + neighbour[e] * c2;
#pragma omp simd
  for (int64_t k = 0; k < c2; ++k) z[k] = a[k] + b[k];
  for (int64_t t = 0; t < w; ++t) {
    const float v = band_value[e * w + t];
    const float* r = w_ut + band_index[e * w + t] * c2;
#pragma omp simd
    for (int64_t k = 0; k < c2; ++k) z[k] += v * r[k];
  }
}

// dL/dy of one edge, y = [f | c] (2C), from dL/dout of its centre atom (C): the gradient of
// sigmoid(f) * softplus(c) given the saved gate = sigmoid(f), core = softplus(c) and
// core_slope = sigmoid(c).
inline void gate_grad(const float* grad_out, const float* gate, const float* core,
                      const float* core_slope, int64_t c, float* grad_y) {
#pragma omp simd
  for (int64_t k = 0; k < c; ++k) {
    grad_y[k] = grad_out[k] * core[k] * gate[k] * (1.0f - gate[k]);
    grad_y[c + k] = grad_out[k] * gate[k] * core_slope[k];
  }
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

int ct_cgconv_abi_version() { return 2; }

// Forward. Writes x (E, 2C), gate = sigmoid(f) (E, C), core = softplus(c) (E, C),
// core_slope = sigmoid(c) (E, C), out (N, C), mean and var (2C, biased).
void ct_cgconv_forward(int64_t n, int64_t e, int64_t c, int64_t w, const float* h_i,
                       const float* h_j, const float* w_ut, const int64_t* band_index,
                       const float* band_value, const int64_t* neighbour, const int64_t* ptr,
                       const float* gamma, const float* beta, float eps, float* x, float* gate,
                       float* core, float* core_slope, float* out, float* mean_out,
                       float* var_out, int nthreads) {
  const int64_t c2 = 2 * c;
  const int nt = std::max(1, nthreads);
  std::vector<double> partial(static_cast<size_t>(nt) * c2, 0.0);
  std::vector<float> mean(c2), inv_std(c2), scale(c2), shift(c2);
  int team = 1;  // OpenMP may run fewer threads than asked (OMP_DYNAMIC, OMP_THREAD_LIMIT, ...)

  // 1. raw edge values into x, and their per-channel sums
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num(), tn = omp_get_num_threads();
#pragma omp single
    team = tn;
    int64_t lo, hi;
    atom_chunk(n, ptr, t, tn, &lo, &hi);
    double* s = partial.data() + t * c2;
    for (int64_t i = lo; i < hi; ++i) {
      for (int64_t ed = ptr[i]; ed < ptr[i + 1]; ++ed) {
        float* z = x + ed * c2;
        raw_edge(ed, i, c2, w, h_i, h_j, w_ut, band_index, band_value, neighbour, z);
#pragma omp simd
        for (int64_t k = 0; k < c2; ++k) s[k] += z[k];
      }
    }
  }
  for (int64_t k = 0; k < c2; ++k) {
    double total = 0.0;
    for (int t = 0; t < team; ++t) total += partial[t * c2 + k];
    mean[k] = static_cast<float>(total / static_cast<double>(e));
  }

  // 2. biased variance, two-pass as BatchNorm computes it
  std::fill(partial.begin(), partial.end(), 0.0);
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num(), tn = omp_get_num_threads();
#pragma omp single
    team = tn;
    int64_t lo, hi;
    chunk(e, t, tn, &lo, &hi);
    double* s = partial.data() + t * c2;
    const float* m = mean.data();
    for (int64_t ed = lo; ed < hi; ++ed) {
      const float* z = x + ed * c2;
#pragma omp simd
      for (int64_t k = 0; k < c2; ++k) {
        const float d = z[k] - m[k];
        s[k] += static_cast<double>(d) * d;
      }
    }
  }
  for (int64_t k = 0; k < c2; ++k) {
    double total = 0.0;
    for (int t = 0; t < team; ++t) total += partial[t * c2 + k];
    const float var = static_cast<float>(total / static_cast<double>(e));
    mean_out[k] = mean[k];
    var_out[k] = var;
    inv_std[k] = 1.0f / std::sqrt(var + eps);
    scale[k] = gamma[k] * inv_std[k];
    shift[k] = beta[k] - mean[k] * scale[k];
  }

  // 3. normalise, gate, and sum over each atom's edges
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num(), tn = omp_get_num_threads();
    int64_t lo, hi;
    atom_chunk(n, ptr, t, tn, &lo, &hi);
    const float *m = mean.data(), *is = inv_std.data(), *sc = scale.data(), *sh = shift.data();
    for (int64_t i = lo; i < hi; ++i) {
      float* o = out + i * c;
      std::memset(o, 0, sizeof(float) * c);
      for (int64_t ed = ptr[i]; ed < ptr[i + 1]; ++ed) {
        float* xe = x + ed * c2;
        float* g = gate + ed * c;
        float* co = core + ed * c;
        float* cs = core_slope + ed * c;
#pragma omp simd
        for (int64_t k = 0; k < c; ++k) {
          const float zf = xe[k], zc = xe[c + k];
          xe[k] = (zf - m[k]) * is[k];
          xe[c + k] = (zc - m[c + k]) * is[c + k];
          const float f = zf * sc[k] + sh[k];
          const float cc = zc * sc[c + k] + sh[c + k];
          const float sig = 1.0f / (1.0f + std::exp(std::min(-f, 80.0f)));
          const float ec = std::exp(std::min(cc, kSoftplusThreshold));
          const float sp = cc > kSoftplusThreshold ? cc : std::log1p(ec);
          g[k] = sig;
          co[k] = sp;
          cs[k] = ec / (1.0f + ec);
          o[k] += sig * sp;
        }
      }
    }
  }
}

// Backward of ct_cgconv_forward given grad_out (N, C). Writes grad_h_i, grad_h_j (N, 2C),
// grad_w_ut (K, 2C), grad_gamma, grad_beta (2C). scratch: nthreads * (N + K) * 2C floats.
void ct_cgconv_backward(int64_t n, int64_t e, int64_t c, int64_t k_features, int64_t w,
                        const float* grad_out, const float* x, const float* gate,
                        const float* core, const float* core_slope, const float* gamma,
                        const float* inv_std, const int64_t* band_index, const float* band_value,
                        const int64_t* neighbour, const int64_t* ptr, float* grad_h_i,
                        float* grad_h_j, float* grad_w_ut, float* grad_gamma, float* grad_beta,
                        float* scratch, int nthreads) {
  const int64_t c2 = 2 * c;
  const int nt = std::max(1, nthreads);
  std::vector<double> partial(static_cast<size_t>(nt) * 2 * c2, 0.0);
  int team = 1;

  // 1. per-channel sums of g = dL/dy and of g * x
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num(), tn = omp_get_num_threads();
#pragma omp single
    team = tn;
    int64_t lo, hi;
    atom_chunk(n, ptr, t, tn, &lo, &hi);
    double* sg = partial.data() + t * 2 * c2;
    double* sgx = sg + c2;
    std::vector<float> grad_y(c2);
    float* gy = grad_y.data();
    for (int64_t i = lo; i < hi; ++i) {
      for (int64_t ed = ptr[i]; ed < ptr[i + 1]; ++ed) {
        gate_grad(grad_out + i * c, gate + ed * c, core + ed * c, core_slope + ed * c, c, gy);
        const float* xe = x + ed * c2;
#pragma omp simd
        for (int64_t k = 0; k < c2; ++k) {
          sg[k] += gy[k];
          sgx[k] += static_cast<double>(gy[k]) * xe[k];
        }
      }
    }
  }
  std::vector<float> scale(c2), mean_g(c2), mean_gx(c2);
  for (int64_t k = 0; k < c2; ++k) {
    double total_g = 0.0, total_gx = 0.0;
    for (int t = 0; t < team; ++t) {
      total_g += partial[t * 2 * c2 + k];
      total_gx += partial[t * 2 * c2 + c2 + k];
    }
    grad_beta[k] = static_cast<float>(total_g);
    grad_gamma[k] = static_cast<float>(total_gx);
    scale[k] = gamma[k] * inv_std[k];
    mean_g[k] = static_cast<float>(total_g / static_cast<double>(e));
    mean_gx[k] = static_cast<float>(total_gx / static_cast<double>(e));
  }

  // 2. dz = scale * (g - mean(g) - x * mean(g x)), scattered to the centre, the neighbour
  //    and the band features of every edge. Each thread sums its neighbour rows in its own
  //    scratch block, zeroing and combining only the rows its edges reach (crystals are
  //    contiguous, so that is about its own atom range).
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
    const float *sc = scale.data(), *mg = mean_g.data(), *mgx = mean_gx.data();
    std::vector<float> dz(c2);
    float* d = dz.data();
    for (int64_t i = lo; i < hi; ++i) {
      float* gi = grad_h_i + i * c2;
      std::memset(gi, 0, sizeof(float) * c2);
      for (int64_t ed = ptr[i]; ed < ptr[i + 1]; ++ed) {
        gate_grad(grad_out + i * c, gate + ed * c, core + ed * c, core_slope + ed * c, c, d);
        const float* xe = x + ed * c2;
#pragma omp simd
        for (int64_t k = 0; k < c2; ++k) d[k] = sc[k] * (d[k] - mg[k] - xe[k] * mgx[k]);
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
