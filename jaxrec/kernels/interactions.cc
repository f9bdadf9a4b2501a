// Fused CPU kernels for the pairwise layers, called from XLA as FFI custom calls.
//
// XLA:CPU runs the per-example pair work of these layers (27x27 Gram matrices;
// 351 pair products per example through a 16x16 attention network) as batched
// tiny matmuls and element-wise passes over [B*P, k] tensors at memory speed.
// Here each example's pair work stays in registers and L1, vectorised across
// pairs (16 per vector) with GCC vector extensions, and the batch is split
// over XLA's intra-op thread pool.
//
// Kernels:
//   dot interaction   out = [x, <t_i, t_j> (i ascending, j < i, or j <= i)]
//                     for t = (x, fields...), and its backward;
//   AFM pair scores   s_ij = h . relu(W^T (v_i * v_j) + b) for pairs i < j
//                     (row-major), and its backward (d fields, dW, db, dh);
//   AFM pair sum      pooled = sum_ij a_ij (v_i * v_j), and its backward.
// The softmax over pairs (with its mask) stays in XLA (jaxrec/layers/afm.py).
//
// jaxrec/kernels/cpu.py compiles this file with the system C++ compiler on first
// use and registers the handlers; layers fall back to their XLA formulation
// where it is unavailable or a width is not instantiated below.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kLanes = 16;
typedef float V16 __attribute__((vector_size(kLanes * sizeof(float))));
// N floats as one vector (a class member: GCC drops vector_size on alias templates).
template <int N>
struct VecOf {
  typedef float type __attribute__((vector_size(N * sizeof(float))));
};

template <typename V>
inline V Load(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}
template <typename V>
inline void Store(float* p, V v) {
  std::memcpy(p, &v, sizeof(V));
}
inline float Sum(V16 v) {
  float s = 0.0f;
  for (int l = 0; l < kLanes; ++l) s += v[l];
  return s;
}
inline int64_t RoundUp(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// Runs body(chunk, begin, end) over [0, n) in chunks of `grain`, on the calling thread
// and on XLA's intra-op pool. Deadlock-free when the pool is busy: the caller
// claims chunks too and waits only for chunks already running elsewhere.
template <typename Body>
void ParallelFor(ffi::ThreadPool& pool, int64_t n, int64_t grain, Body body) {
  const int64_t chunks = (n + grain - 1) / grain;
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), chunks - 1);
  if (helpers <= 0) {
    for (int64_t c = 0; c < chunks; ++c) body(c, c * grain, std::min(n, (c + 1) * grain));
    return;
  }
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
  };
  auto state = std::make_shared<State>();
  auto work = [state, chunks, grain, n, body]() {
    for (int64_t c; (c = state->next.fetch_add(1)) < chunks;) {
      body(c, c * grain, std::min(n, (c + 1) * grain));
      state->done.fetch_add(1, std::memory_order_release);
    }
  };
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule([work] { work(); });
  work();
  while (state->done.load(std::memory_order_acquire) < chunks) std::this_thread::yield();
}

// ---------------------------------------------------------------------------
// DLRM dot interaction over n = F + 1 vectors of width D per example.

inline int64_t PairIndex(int64_t i, int64_t j, int64_t offset) {
  return i * (i - 1 + 2 * offset) / 2 + j;  // row i of the lower triangle holds i + offset
}

template <int D>
void DotForward(const float* x, const float* fields, float* out, int64_t begin, int64_t end,
                int64_t num_fields, int64_t offset) {
  const int64_t n = num_fields + 1;
  const int64_t padded = RoundUp(n, kLanes);
  const int64_t width = D + n * (n - 1 + 2 * offset) / 2;
  std::vector<float> columns(D * padded, 0.0f);  // t transposed: [D][padded]
  std::vector<float> row(padded);
  for (int64_t b = begin; b < end; ++b) {
    const float* xb = x + b * D;
    const float* fb = fields + b * num_fields * D;
    float* ob = out + b * width;
    for (int c = 0; c < D; ++c) {
      float* col = columns.data() + c * padded;
      col[0] = xb[c];
      for (int64_t i = 1; i < n; ++i) col[i] = fb[(i - 1) * D + c];
    }
    std::memcpy(ob, xb, D * sizeof(float));
    for (int64_t i = 0; i < n; ++i) {
      const int64_t len = i + offset;
      if (len == 0) continue;
      const float* ti = i == 0 ? xb : fb + (i - 1) * D;
      for (int64_t j0 = 0; j0 < len; j0 += kLanes) {  // Gram row i, 16 columns at a time
        V16 acc = {};
        for (int c = 0; c < D; ++c) acc += ti[c] * Load<V16>(columns.data() + c * padded + j0);
        Store(row.data() + j0, acc);
      }
      std::memcpy(ob + D + PairIndex(i, 0, offset), row.data(), len * sizeof(float));
    }
  }
}

template <int D>
void DotBackward(const float* x, const float* fields, const float* g, float* dx,
                 float* dfields, int64_t begin, int64_t end, int64_t num_fields,
                 int64_t offset) {
  using VD = typename VecOf<D>::type;
  const int64_t n = num_fields + 1;
  const int64_t width = D + n * (n - 1 + 2 * offset) / 2;
  for (int64_t b = begin; b < end; ++b) {
    const float* xb = x + b * D;
    const float* fb = fields + b * num_fields * D;
    const float* gb = g + b * width;
    const float* gpairs = gb + D;
    auto vector = [&](int64_t j) { return Load<VD>(j == 0 ? xb : fb + (j - 1) * D); };
    for (int64_t i = 0; i < n; ++i) {
      // dt_i = sum_j G_ij t_j with G the symmetric pair cotangent (diagonal doubled).
      VD acc = i == 0 ? Load<VD>(gb) : VD{};
      const float* row = gpairs + PairIndex(i, 0, offset);
      for (int64_t j = 0; j < i; ++j) acc += row[j] * vector(j);
      if (offset) acc += 2.0f * row[i] * vector(i);
      for (int64_t j = i + 1; j < n; ++j) acc += gpairs[PairIndex(j, i, offset)] * vector(j);
      Store(i == 0 ? dx + b * D : dfields + (b * num_fields + i - 1) * D, acc);
    }
  }
}

// ---------------------------------------------------------------------------
// AFM pair scores. Per example the pair products are laid out pair-minor,
// products[c][p] (p = row-major pair index, padded to a multiple of 16), so the
// attention network runs on 16 pairs per vector with W and b as broadcast
// scalars and T independent accumulators.

struct PairLayout {
  int64_t num_fields, num_pairs, padded_pairs, padded_fields;
  std::vector<int32_t> first, second;  // the fields of pair p (0 in the padding)
  explicit PairLayout(int64_t f)
      : num_fields(f),
        num_pairs(f * (f - 1) / 2),
        padded_pairs(RoundUp(f * (f - 1) / 2, kLanes)),
        // Zeros past the last field let a 16-lane block run past a row's end.
        padded_fields(RoundUp(f, kLanes) + kLanes),
        first(padded_pairs, 0),
        second(padded_pairs, 0) {
    for (int64_t i = 0, p = 0; i < f; ++i) {
      for (int64_t j = i + 1; j < f; ++j, ++p) {
        first[p] = static_cast<int32_t>(i);
        second[p] = static_cast<int32_t>(j);
      }
    }
  }
  int64_t Start(int64_t i) const { return i * (2 * num_fields - i - 1) / 2; }
};

// columns[c][f] = v[f][c]; products[c][p] = v[i][c] v[j][c] for pair p = (i, j).
template <int K>
void PairProducts(const float* v, const PairLayout& layout, float* columns, float* products) {
  const int64_t f = layout.num_fields;
  const int64_t stride = layout.padded_pairs;
  for (int c = 0; c < K; ++c) {
    float* col = columns + c * layout.padded_fields;
    for (int64_t i = 0; i < f; ++i) col[i] = v[i * K + c];
  }
#if defined(__AVX512F__)
  if (f <= 32) {
    // Each block of 16 pairs picks its two factors out of the (<= 32) column
    // entries with two-register permutes: aligned stores that never overlap.
    for (int64_t p0 = 0; p0 < layout.padded_pairs; p0 += kLanes) {
      const __m512i fi = _mm512_loadu_si512(layout.first.data() + p0);
      const __m512i fj = _mm512_loadu_si512(layout.second.data() + p0);
      for (int c = 0; c < K; ++c) {
        const float* col = columns + c * layout.padded_fields;
        const __m512 lo = _mm512_loadu_ps(col), hi = _mm512_loadu_ps(col + kLanes);
        _mm512_storeu_ps(products + c * stride + p0,
                         _mm512_mul_ps(_mm512_permutex2var_ps(lo, fi, hi),
                                       _mm512_permutex2var_ps(lo, fj, hi)));
      }
    }
    return;
  }
#endif
  for (int c = 0; c < K; ++c) {
    const float* col = columns + c * layout.padded_fields;
    float* prod = products + c * stride;
    // Rows in ascending order: a block's lanes past the row's end (zeros, from the
    // column padding) are overwritten by the next row or land in the padding.
    for (int64_t i = 0; i + 1 < f; ++i) {
      const int64_t start = layout.Start(i), len = f - 1 - i;
      for (int64_t j0 = 0; j0 < len; j0 += kLanes) {
        Store(prod + start + j0, col[i] * Load<V16>(col + i + 1 + j0));
      }
    }
  }
}

// Scratch sizes: the row-segment path may write one block past the last pair.
inline int64_t ProductsSize(const PairLayout& layout, int k) {
  return k * layout.padded_pairs + kLanes;
}

// z[u] = b_u + sum_c W[c][u] products[c][p0:p0+16]: T independent FMA chains.
template <int K, int T>
inline void HiddenPreactivation(const float* products, int64_t stride, const float* w,
                                const float* bias, V16* z) {
  for (int u = 0; u < T; ++u) z[u] = bias[u] - V16{};
  for (int c = 0; c < K; ++c) {
    const V16 prod = Load<V16>(products + c * stride);
    for (int u = 0; u < T; ++u) z[u] += w[c * T + u] * prod;
  }
}

template <int K, int T>
void AfmScores(const float* fields, const float* w, const float* bias, const float* h,
               float* scores, int64_t begin, int64_t end, int64_t num_fields) {
  const PairLayout layout(num_fields);
  const int64_t stride = layout.padded_pairs;
  std::vector<float> columns(K * layout.padded_fields, 0.0f);
  std::vector<float> products(ProductsSize(layout, K), 0.0f);
  std::vector<float> block_scores(layout.padded_pairs);
  for (int64_t b = begin; b < end; ++b) {
    PairProducts<K>(fields + b * num_fields * K, layout, columns.data(), products.data());
    for (int64_t p0 = 0; p0 < layout.padded_pairs; p0 += kLanes) {
      V16 z[T];
      HiddenPreactivation<K, T>(products.data() + p0, stride, w, bias, z);
      V16 s = {};
      for (int u = 0; u < T; ++u) s += h[u] * (z[u] > 0.0f ? z[u] : 0.0f);
      Store(block_scores.data() + p0, s);
    }
    std::memcpy(scores + b * layout.num_pairs, block_scores.data(),
                layout.num_pairs * sizeof(float));
  }
}

// Per slice of the batch: d fields of its examples and its partial dW, db, dh.
// Pass 1 (pair-minor, 16 pairs per vector) recomputes the hidden layer and keeps
// E[u][p] = ds_p h_u 1[z_up > 0]; pass 2 (field-minor, one pair at a time, K
// components per vector) forms dp = W E_p, dW += p E_pᵀ and d v_i, d v_j.
template <int K, int T>
void AfmScoresBackward(const float* fields, const float* w, const float* bias, const float* h,
                       const float* d_scores, float* d_fields, float* d_w, float* d_bias,
                       float* d_h, int64_t begin, int64_t end, int64_t num_fields) {
  using VK = typename VecOf<K>::type;
  const PairLayout layout(num_fields);
  const int64_t stride = layout.padded_pairs;
  std::vector<float> columns(K * layout.padded_fields, 0.0f);
  std::vector<float> products(ProductsSize(layout, K), 0.0f);
  std::vector<float> e_rows(T * stride);
  std::vector<float> ds(layout.padded_pairs, 0.0f);
  VK w_columns[T];  // W[:, u]
  for (int u = 0; u < T; ++u) {
    for (int c = 0; c < K; ++c) w_columns[u][c] = w[c * T + u];
  }
  V16 acc_b[T] = {}, acc_h[T] = {};
  VK acc_w[T] = {};  // dW[:, u]
  for (int64_t b = begin; b < end; ++b) {
    const float* v = fields + b * num_fields * K;
    PairProducts<K>(v, layout, columns.data(), products.data());
    std::memcpy(ds.data(), d_scores + b * layout.num_pairs, layout.num_pairs * sizeof(float));
    for (int64_t p0 = 0; p0 < layout.padded_pairs; p0 += kLanes) {
      V16 z[T];
      HiddenPreactivation<K, T>(products.data() + p0, stride, w, bias, z);
      const V16 dsv = Load<V16>(ds.data() + p0);  // 0 in the padding lanes
      for (int u = 0; u < T; ++u) {
        const V16 on = z[u] > 0.0f ? dsv : 0.0f;
        acc_h[u] += on * z[u];    // d h_u = sum ds relu(z_u)
        const V16 e = on * h[u];  // d hidden_u
        acc_b[u] += e;
        Store(e_rows.data() + u * stride + p0, e);
      }
    }
    float* dv = d_fields + b * num_fields * K;
    std::memset(dv, 0, num_fields * K * sizeof(float));
    for (int64_t i = 0, p = 0; i + 1 < num_fields; ++i) {
      const VK vi = Load<VK>(v + i * K);
      VK dvi = {};
      for (int64_t j = i + 1; j < num_fields; ++j, ++p) {
        const VK vj = Load<VK>(v + j * K);
        const VK prod = vi * vj;
        VK dp[4] = {};  // four chains over u
        for (int u = 0; u < T; ++u) {
          const float e = e_rows[u * stride + p];
          acc_w[u] += e * prod;
          dp[u % 4] += e * w_columns[u];
        }
        const VK d_prod = (dp[0] + dp[1]) + (dp[2] + dp[3]);
        dvi += d_prod * vj;
        Store(dv + j * K, Load<VK>(dv + j * K) + d_prod * vi);
      }
      Store(dv + i * K, Load<VK>(dv + i * K) + dvi);
    }
  }
  for (int u = 0; u < T; ++u) {
    d_bias[u] = Sum(acc_b[u]);
    d_h[u] = Sum(acc_h[u]);
    for (int c = 0; c < K; ++c) d_w[c * T + u] = acc_w[u][c];
  }
}

// ---------------------------------------------------------------------------
// AFM weighted pair sum: pooled = sum_{i<j} a_ij (v_i * v_j), one pair at a time
// with K components per vector (the products are never stored).

template <int K>
void WeightedPairSum(const float* weights, const float* fields, float* pooled, int64_t begin,
                     int64_t end, int64_t num_fields) {
  using VK = typename VecOf<K>::type;
  const int64_t num_pairs = num_fields * (num_fields - 1) / 2;
  for (int64_t b = begin; b < end; ++b) {
    const float* v = fields + b * num_fields * K;
    const float* a = weights + b * num_pairs;
    VK out = {};
    for (int64_t i = 0, p = 0; i + 1 < num_fields; ++i) {
      VK acc = {};  // sum_{j > i} a_ij v_j
      for (int64_t j = i + 1; j < num_fields; ++j, ++p) acc += a[p] * Load<VK>(v + j * K);
      out += Load<VK>(v + i * K) * acc;
    }
    Store(pooled + b * K, out);
  }
}

// d a_ij = g . (v_i * v_j) (pair-minor, 16 pairs per vector) and
// d v_i = g * sum_{j != i} a_ij v_j.
template <int K>
void WeightedPairSumBackward(const float* weights, const float* fields, const float* g,
                             float* d_weights, float* d_fields, int64_t begin, int64_t end,
                             int64_t num_fields) {
  using VK = typename VecOf<K>::type;
  const PairLayout layout(num_fields);
  const int64_t stride = layout.padded_pairs;
  std::vector<float> columns(K * layout.padded_fields, 0.0f);
  std::vector<float> products(ProductsSize(layout, K), 0.0f);
  std::vector<float> block(layout.padded_pairs);
  for (int64_t b = begin; b < end; ++b) {
    const float* v = fields + b * num_fields * K;
    const float* a = weights + b * layout.num_pairs;
    const float* gb = g + b * K;
    PairProducts<K>(v, layout, columns.data(), products.data());
    for (int64_t p0 = 0; p0 < layout.padded_pairs; p0 += kLanes) {
      V16 da = {};
      for (int c = 0; c < K; ++c) da += gb[c] * Load<V16>(products.data() + c * stride + p0);
      Store(block.data() + p0, da);
    }
    std::memcpy(d_weights + b * layout.num_pairs, block.data(),
                layout.num_pairs * sizeof(float));
    const VK gv = Load<VK>(gb);
    float* dv = d_fields + b * num_fields * K;
    std::memset(dv, 0, num_fields * K * sizeof(float));
    for (int64_t i = 0, p = 0; i + 1 < num_fields; ++i) {
      const VK gvi = gv * Load<VK>(v + i * K);
      VK dvi = {};
      for (int64_t j = i + 1; j < num_fields; ++j, ++p) {
        dvi += a[p] * Load<VK>(v + j * K);
        Store(dv + j * K, Load<VK>(dv + j * K) + a[p] * gvi);
      }
      Store(dv + i * K, Load<VK>(dv + i * K) + gv * dvi);
    }
  }
}

// ---------------------------------------------------------------------------
// FFI handlers: dispatch on the compile-time widths instantiated here.

#define JAXREC_FOR_DOT_WIDTHS(X) X(4) X(8) X(16) X(32) X(64) X(128)
#define JAXREC_FOR_AFM_WIDTHS(X) \
  X(8, 8) X(8, 16) X(16, 8) X(16, 16) X(16, 32) X(32, 16) X(32, 32)

constexpr int64_t kGrain = 64;  // examples per parallel chunk

ffi::Error Unsupported(const char* what) {
  return ffi::Error(ffi::ErrorCode::kUnimplemented, what);
}

ffi::Error DotForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                          ffi::Buffer<ffi::F32> fields, ffi::ResultBuffer<ffi::F32> out,
                          int64_t self_interaction) {
  const auto dims = fields.dimensions();
  if (dims.size() != 3) return ffi::Error::InvalidArgument("fields must be [B, F, D]");
  const int64_t batch = dims[0], num_fields = dims[1], dim = dims[2];
  const float* xp = x.typed_data();
  const float* fp = fields.typed_data();
  float* op = out->typed_data();
#define CASE(W)                                                                  \
  if (dim == W) {                                                                \
    ParallelFor(pool, batch, kGrain, [=](int64_t, int64_t begin, int64_t end) {  \
      DotForward<W>(xp, fp, op, begin, end, num_fields, self_interaction);       \
    });                                                                          \
    return ffi::Error::Success();                                                \
  }
  JAXREC_FOR_DOT_WIDTHS(CASE)
#undef CASE
  return Unsupported("dot interaction: embedding width not instantiated");
}

ffi::Error DotBackwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                           ffi::Buffer<ffi::F32> fields, ffi::Buffer<ffi::F32> g,
                           ffi::ResultBuffer<ffi::F32> dx, ffi::ResultBuffer<ffi::F32> dfields,
                           int64_t self_interaction) {
  const auto dims = fields.dimensions();
  if (dims.size() != 3) return ffi::Error::InvalidArgument("fields must be [B, F, D]");
  const int64_t batch = dims[0], num_fields = dims[1], dim = dims[2];
  const float* xp = x.typed_data();
  const float* fp = fields.typed_data();
  const float* gp = g.typed_data();
  float* dxp = dx->typed_data();
  float* dfp = dfields->typed_data();
#define CASE(W)                                                                          \
  if (dim == W) {                                                                        \
    ParallelFor(pool, batch, kGrain, [=](int64_t, int64_t begin, int64_t end) {          \
      DotBackward<W>(xp, fp, gp, dxp, dfp, begin, end, num_fields, self_interaction);    \
    });                                                                                  \
    return ffi::Error::Success();                                                        \
  }
  JAXREC_FOR_DOT_WIDTHS(CASE)
#undef CASE
  return Unsupported("dot interaction: embedding width not instantiated");
}

ffi::Error AfmScoresImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> fields,
                         ffi::Buffer<ffi::F32> kernel, ffi::Buffer<ffi::F32> bias,
                         ffi::Buffer<ffi::F32> h, ffi::ResultBuffer<ffi::F32> scores) {
  const auto dims = fields.dimensions();
  const auto kdims = kernel.dimensions();
  if (dims.size() != 3 || kdims.size() != 2 || kdims[0] != dims[2]) {
    return ffi::Error::InvalidArgument("fields [B, F, K] and kernel [K, T] expected");
  }
  const int64_t batch = dims[0], num_fields = dims[1], k = dims[2], t = kdims[1];
  const float *fp = fields.typed_data(), *wp = kernel.typed_data(), *bp = bias.typed_data(),
              *hp = h.typed_data();
  float* sp = scores->typed_data();
#define CASE(KW, TW)                                                             \
  if (k == KW && t == TW) {                                                      \
    ParallelFor(pool, batch, kGrain, [=](int64_t, int64_t begin, int64_t end) {  \
      AfmScores<KW, TW>(fp, wp, bp, hp, sp, begin, end, num_fields);             \
    });                                                                          \
    return ffi::Error::Success();                                                \
  }
  JAXREC_FOR_AFM_WIDTHS(CASE)
#undef CASE
  return Unsupported("afm pair scores: (K, T) not instantiated");
}

ffi::Error AfmScoresBackwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> fields,
                                 ffi::Buffer<ffi::F32> kernel, ffi::Buffer<ffi::F32> bias,
                                 ffi::Buffer<ffi::F32> h, ffi::Buffer<ffi::F32> d_scores,
                                 ffi::ResultBuffer<ffi::F32> d_fields,
                                 ffi::ResultBuffer<ffi::F32> d_kernel,
                                 ffi::ResultBuffer<ffi::F32> d_bias,
                                 ffi::ResultBuffer<ffi::F32> d_h) {
  const auto dims = fields.dimensions();
  const auto kdims = kernel.dimensions();
  if (dims.size() != 3 || kdims.size() != 2 || kdims[0] != dims[2]) {
    return ffi::Error::InvalidArgument("fields [B, F, K] and kernel [K, T] expected");
  }
  const int64_t batch = dims[0], num_fields = dims[1], k = dims[2], t = kdims[1];
  const int64_t chunks = (batch + kGrain - 1) / kGrain;
  // Per-chunk partial sums of dW, db, dh (summed in chunk order: deterministic).
  std::vector<float> partial(chunks * (k * t + 2 * t), 0.0f);
  const float *fp = fields.typed_data(), *wp = kernel.typed_data(), *bp = bias.typed_data(),
              *hp = h.typed_data(), *dsp = d_scores.typed_data();
  float* dfp = d_fields->typed_data();
  float* pp = partial.data();
  const int64_t slot = k * t + 2 * t;
#define CASE(KW, TW)                                                                     \
  if (k == KW && t == TW) {                                                              \
    ParallelFor(pool, batch, kGrain, [=](int64_t chunk, int64_t begin, int64_t end) {    \
      float* mine = pp + chunk * slot;                                                   \
      AfmScoresBackward<KW, TW>(fp, wp, bp, hp, dsp, dfp, mine, mine + KW * TW,          \
                                mine + KW * TW + TW, begin, end, num_fields);            \
    });                                                                                  \
  } else
  JAXREC_FOR_AFM_WIDTHS(CASE) { return Unsupported("afm pair scores: (K, T) not instantiated"); }
#undef CASE
  float* dw = d_kernel->typed_data();
  float* db = d_bias->typed_data();
  float* dh = d_h->typed_data();
  std::fill(dw, dw + k * t, 0.0f);
  std::fill(db, db + t, 0.0f);
  std::fill(dh, dh + t, 0.0f);
  for (int64_t c = 0; c < chunks; ++c) {
    const float* mine = pp + c * slot;
    for (int64_t i = 0; i < k * t; ++i) dw[i] += mine[i];
    for (int64_t u = 0; u < t; ++u) db[u] += mine[k * t + u];
    for (int64_t u = 0; u < t; ++u) dh[u] += mine[k * t + t + u];
  }
  return ffi::Error::Success();
}

#define JAXREC_FOR_WEIGHTED_SUM_WIDTHS(X) X(4) X(8) X(16) X(32) X(64)

ffi::Error WeightedSumImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> weights,
                           ffi::Buffer<ffi::F32> fields, ffi::ResultBuffer<ffi::F32> pooled) {
  const auto dims = fields.dimensions();
  if (dims.size() != 3) return ffi::Error::InvalidArgument("fields must be [B, F, K]");
  const int64_t batch = dims[0], num_fields = dims[1], k = dims[2];
  const float *ap = weights.typed_data(), *fp = fields.typed_data();
  float* op = pooled->typed_data();
#define CASE(W)                                                                  \
  if (k == W) {                                                                  \
    ParallelFor(pool, batch, kGrain, [=](int64_t, int64_t begin, int64_t end) {  \
      WeightedPairSum<W>(ap, fp, op, begin, end, num_fields);                    \
    });                                                                          \
    return ffi::Error::Success();                                                \
  }
  JAXREC_FOR_WEIGHTED_SUM_WIDTHS(CASE)
#undef CASE
  return Unsupported("afm weighted pair sum: width not instantiated");
}

ffi::Error WeightedSumBackwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> weights,
                                   ffi::Buffer<ffi::F32> fields, ffi::Buffer<ffi::F32> g,
                                   ffi::ResultBuffer<ffi::F32> d_weights,
                                   ffi::ResultBuffer<ffi::F32> d_fields) {
  const auto dims = fields.dimensions();
  if (dims.size() != 3) return ffi::Error::InvalidArgument("fields must be [B, F, K]");
  const int64_t batch = dims[0], num_fields = dims[1], k = dims[2];
  const float *ap = weights.typed_data(), *fp = fields.typed_data(), *gp = g.typed_data();
  float *dap = d_weights->typed_data(), *dfp = d_fields->typed_data();
#define CASE(W)                                                                        \
  if (k == W) {                                                                        \
    ParallelFor(pool, batch, kGrain, [=](int64_t, int64_t begin, int64_t end) {        \
      WeightedPairSumBackward<W>(ap, fp, gp, dap, dfp, begin, end, num_fields);        \
    });                                                                                \
    return ffi::Error::Success();                                                      \
  }
  JAXREC_FOR_WEIGHTED_SUM_WIDTHS(CASE)
#undef CASE
  return Unsupported("afm weighted pair sum: width not instantiated");
}

}  // namespace

// The vector width this build targets. The kernels are written for 16-lane float
// vectors: without AVX-512, GCC splits them and they lose to XLA's formulation,
// so jaxrec/kernels/cpu.py uses them only when this says 512.
extern "C" int32_t JaxrecVectorBits() {
#if defined(__AVX512F__)
  return 512;
#elif defined(__AVX2__)
  return 256;
#else
  return 128;
#endif
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxrecDotInteractionForward, DotForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("self_interaction"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxrecDotInteractionBackward, DotBackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("self_interaction"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxrecAfmScores, AfmScoresImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxrecAfmScoresBackward, AfmScoresBackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxrecAfmWeightedSum, WeightedSumImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxrecAfmWeightedSumBackward, WeightedSumBackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
