// The one cost model: which route an adapted linear layer takes, per call, on every device.
//
// Every decision about how to compute x delta_W^T (and its gradients) is made here, from the device type, the
// model's dtype, the tokens of the call, out, in, n and whether the call trains: fourierft::linear's forward and
// backward (CPU fused kernels and the ATen implementation registered for CUDA), the C++ FourierFTLayer and the
// Python layer (through fourierft._C) all ask these functions, so they cannot disagree.
//
// Two sets of constants: the CPU's, fitted on the 2-core x86 VM of docs/benchmarks.md, and the CUDA GPU's, per
// operation rates of an NVIDIA H200, measured where docs/gpu.md says so and from the data sheet elsewhere (each
// constant says which). Other accelerators take the GPU's.
#include "internal.h"

#include <fourierft/ops.h>

#include <c10/core/ScalarType.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

namespace fourierft {

using detail::RoutePass;

namespace {
std::atomic<LinearPath> forced_linear_path{LinearPath::Auto};
std::atomic<bool> inference_cache_enabled{true};
std::atomic<bool> keep_delta_enabled{false};

// ------------------------------------------------------------------------------------------------
// CPU
// fourierft::linear, per call, in nanoseconds (fitted on the 2-core x86 VM of docs/benchmarks.md, float32, from
// ops.linear timings with each path forced by set_linear_path, widths 256-4096, 128-8192 tokens, n 1000..10%).
// The spectral pipeline costs, per row, a real FFT of each width with the transposes around it, and the
// scatter (or correlation) over the n coefficients ...
constexpr double kPipelineNsPerPointLog = 0.07;
constexpr double kPipelineNsPerCoefficient = 0.2;
// ... against building W + delta_W once per call: an irfft2 of the d1 x d2 spectrum and one add, after
// scattering the n coefficients into it (random writes).
constexpr double kMergeNsPerPointLog = 0.1;
constexpr double kMergeNsPerCoefficient = 8.0;
// The folded route: per row, the real FFTs of both widths and two GEMM rows against the h1 x h2 matrices; per
// call, building those matrices (zeroing 2 h1 h2 values, then n scattered adds: random writes, as the merged
// weight's; the spectrum gradient's n reads of A and B cost about the same).
constexpr double kFoldedNsPerMultiplyAdd = 0.006;
constexpr double kFoldedNsPerPointLog = 0.07;
constexpr double kFoldedBuildNsPerPoint = 0.2;
constexpr double kFoldedBuildNsPerCoefficient = 8.0;
// The spectrum gradient by correlation costs, per row and coefficient, two gathers and a multiply-add in the
// pipeline's blocks.
constexpr double kCorrelateNsPerCoefficient = 0.2;
// A cached W + delta_W costs, per call, the fingerprint of W (one read; in a model W comes from memory, not
// cache: 0.18-0.20 ns per entry at 768^2-1024^2, 0.32-0.35 at 2048^2-4096^2, measured between GEMMs) against
// the pipeline's forward alone, which inference runs at ~0.75 of pipeline_ns (fitted on forward + backward
// calls; measured 0.7-0.75 of it at widths 768-4096, 512-1024 tokens). With 0.2 and the whole pipeline_ns the
// cache won at 2048^2 and 4096^2 with 512 tokens, where it cost 1.34 and 5.8 ms a call against the pipeline's
// 1.19 and 2.65.
constexpr double kFingerprintNsPerPoint = 0.35;
constexpr double kInferencePipelineShare = 0.75;
// Inside a training step (after the base GEMMs, the padded half spectra of fft_rows.h), the pipeline's forward
// costs 0.40-0.60 of pipeline_ns (measured at widths 384-2048, 512-4096 tokens, n = 1000, forward timed alone
// in rounds with the frozen layer's), while the merged route's extra cost is ~1.0-1.3x its estimate at 2048+
// tokens (0.6x at fewer, where the pipeline wins anyway). The forward (and a backward's grad_x alone: the same
// transforms and scatter) compares merged against 0.55 of pipeline_ns: merged from ~2.5 tokens per feature
// (768 x 2048, 1536 x 4096: merged; 1024 x 2048, 2048 x 2048: pipeline; all as measured). Beside a correlation
// that transforms g's and x's rows anyway, grad_x by the pipeline adds 0.23-0.27 of pipeline_ns warm, ~0.3 in
// a step: merged from ~4 tokens per feature (768 x 2048: pipeline, 1.261x vs 1.290x the frozen layer; 384 x 4096,
// 512 x 4096, 256 x 8192: merged, 1.317x vs 1.408x, 1.260x vs 1.294x, 1.418x vs 1.570x; 1024 x 4096 tied). With
// the shares 1.0 and 0.5 the forward merged from 1.4 tokens per feature and grad_x from 2.9.
constexpr double kForwardPipelineShare = 0.55;
constexpr double kGradXBesideCorrelationShare = 0.3;

double pipeline_ns(int64_t tokens, int64_t out_features, int64_t in_features, int64_t n_frequency) {
  const double d1 = static_cast<double>(out_features), d2 = static_cast<double>(in_features);
  return static_cast<double>(std::max<int64_t>(tokens, 1)) *
         (kPipelineNsPerPointLog * (d1 * std::log2(d1 + 1) + d2 * std::log2(d2 + 1)) +
          kPipelineNsPerCoefficient * static_cast<double>(n_frequency));
}

// The non-fused layer's choice on the CPU (several active adapters, a Conv1D or hooked base): spectral_linear
// against a GEMM with delta_W, in nanoseconds: per row a real FFT of each width and the O(n) gathers, against one
// GEMM row, plus building delta_W (an irfft2) unless it is cached.
constexpr double kAdapterFftNsPerPointLog = 0.105;
constexpr double kAdapterGatherNsPerCoefficient = 1.8;
constexpr double kAdapterGemmNsPerMultiplyAdd = 0.015;
constexpr double kAdapterDeltaNsPerPointLog = 0.3;

// ------------------------------------------------------------------------------------------------
// CUDA (and any other accelerator), in nanoseconds. Measured on an NVIDIA H200, torch 2.11 + CUDA 13:
//   a bf16 GEMM 16384 x 3072 x 3072 in 0.39 ms (~790 TFLOP/s): 2.5e-6 ns per multiply-add;
//   a device copy at ~4.3 TB/s: the floor of every memory-bound pass (2.3e-4 ns per byte);
//   cuFFT r2c or c2r of 16384 x 3072 float32 rows in 0.36 ms each: 7.2e-3 ns per real point and transform.
// From the data sheet, not measured: float32 GEMMs without TF32 at ~67 TFLOP/s (3.0e-5 ns per multiply-add),
// float64 at about half that rate.
constexpr double kGpuHalfGemmNsPerMultiplyAdd = 2.5e-6;
constexpr double kGpuFloatGemmNsPerMultiplyAdd = 3.0e-5;
constexpr double kGpuDoubleGemmNsPerMultiplyAdd = 6.0e-5;
constexpr double kGpuNsPerByte = 1.0 / 4300.0;
constexpr double kGpuFftNsPerPoint = 7.2e-3;
// The host's side, fitted to layer measurements on an H200 (frozen layers, PEFT's LoRA r=32 and FourierFT): ~14 us per
// kernel launch plus ~4 us per dispatched ATen op (views included); not re-measured with this code (docs/gpu.md). Launches are asynchronous, so a pass costs the larger of its device time and its host
// time. The launches and ops of each pass below are what the ATen implementation dispatches (counted on fake CUDA
// tensors; tests/python/test_fake_cuda.py pins the launches), without the base layer's own GEMM.
constexpr double kGpuHostNsPerLaunch = 14000.0;
constexpr double kGpuHostNsPerOp = 4000.0;
// The spectral route per pass (two row transforms, the sparse product over the rows' interleaved half spectra,
// conversions), per row and point of both widths. Its one measurement is of the ATen composition it replaces
// ([tokens, n] gathers, atomics): 8.1 ms for a 3072 x 3072 forward + backward at 16384 tokens where the frozen
// layer took 0.97 ms, i.e. ~0.024 ns per point and pass, three times the bare transforms. Taken as is until the
// sparse route is measured: an upper bound, so the GPU prefers the measured dense route at training sizes. Its
// sparse patterns are built once per indices tensor (index_plan.cpp): no synchronisation per call.
constexpr double kGpuSpectralNsPerPoint = 0.024;
// Per stored entry of the sparse operator and row (the n-dependent part; at most 4n entries per pass; not
// measured: taken so that 1000 coefficients cost a sixth of a pass at width 3072).
constexpr double kGpuSparseNsPerEntry = 1.0e-4;

bool half_precision(at::ScalarType dtype) { return dtype == at::kHalf || dtype == at::kBFloat16; }

// Device and host time of some GPU work, in ns; it costs the larger of the two.
struct GpuCost {
  double device = 0.0, host = 0.0;
  double wall() const { return std::max(device, host); }
};
GpuCost operator+(const GpuCost& a, const GpuCost& b) { return {a.device + b.device, a.host + b.host}; }
GpuCost device_work(double ns, int launches, int ops) {
  return {ns, launches * kGpuHostNsPerLaunch + ops * kGpuHostNsPerOp};
}

GpuCost gpu_gemm(at::ScalarType dtype, double m, double k, double n) {
  const double rate = dtype == at::kDouble  ? kGpuDoubleGemmNsPerMultiplyAdd
                      : dtype == at::kFloat ? kGpuFloatGemmNsPerMultiplyAdd
                                            : kGpuHalfGemmNsPerMultiplyAdd;
  const double bytes = static_cast<double>(c10::elementSize(dtype)) * (m * k + k * n + m * n);
  return device_work(std::max(rate * m * k * n, kGpuNsPerByte * bytes), 1, 2);
}

// delta_W from the n coefficients: zero the doubled Hermitian half spectrum, scale and scatter the coefficients, an
// irfft2 (two passes of transforms over d1 x d2 points), then, for a half-precision model, the cast (read 4 bytes,
// write 2 per entry): 5 launches.
GpuCost gpu_delta_build(const LayerCall& call) {
  const double points = static_cast<double>(call.out_features) * static_cast<double>(call.in_features);
  return device_work(2.0 * kGpuFftNsPerPoint * points +
                         kGpuNsPerByte * points * (half_precision(call.dtype) ? 14.0 : 12.0),
                     5, 10);
}

// One pass of the spectral route over the call's rows (input width `in_len`, output `out_len`): 10 launches.
GpuCost gpu_spectral_apply(const LayerCall& call, int64_t in_len, int64_t out_len) {
  const double t = static_cast<double>(std::max<int64_t>(call.tokens, 1));
  const double widths = static_cast<double>(in_len + out_len);
  return device_work(kGpuSpectralNsPerPoint * t * widths + kGpuSparseNsPerEntry * t * 4.0 * call.n_frequency, 10,
                     22);
}

// What a route adds to the layer's own GEMMs on the GPU, in one pass.
GpuCost gpu_route(const LayerCall& call, LinearPath route, RoutePass pass) {
  const double t = static_cast<double>(std::max<int64_t>(call.tokens, 1));
  const double d1 = static_cast<double>(call.out_features), d2 = static_cast<double>(call.in_features);
  if (route == LinearPath::Spectral) {
    return pass == RoutePass::Forward ? gpu_spectral_apply(call, call.in_features, call.out_features)
                                      : gpu_spectral_apply(call, call.out_features, call.in_features);
  }
  // Dense: delta_W is built in every pass (unless set_keep_delta keeps the forward's, which the route choice does
  // not count on). A half-precision model adds one GEMM of its own dtype; float32/float64 fold delta_W into W (one
  // add over d1 x d2) and the layer's GEMM does the rest.
  const GpuCost apply = half_precision(call.dtype) ? gpu_gemm(call.dtype, t, d2, d1)
                                                   : device_work(kGpuNsPerByte * d1 * d2 * 12.0, 1, 1);
  return gpu_delta_build(call) + apply;
}

// The spectrum's gradient: densely, G = g^T x (one GEMM of the model's dtype, float32 accumulation), an rfft2 of G
// (transforms over d1 x d2 points, as delta_W's) read at the n entries and scaled (4 launches with the GEMM);
// spectrally, the rows' transforms of x and g and one sampled product over 2n entries (9 launches).
GpuCost gpu_grad_spectrum(const LayerCall& call, bool dense) {
  const double t = static_cast<double>(std::max<int64_t>(call.tokens, 1));
  const double d1 = static_cast<double>(call.out_features), d2 = static_cast<double>(call.in_features);
  if (dense) {
    return gpu_gemm(call.dtype, d1, t, d2) +
           device_work(2.0 * kGpuFftNsPerPoint * d1 * d2 + kGpuNsPerByte * d1 * d2 * 12.0, 3, 11);
  }
  return device_work(kGpuSpectralNsPerPoint * t * (d1 + d2) + kGpuSparseNsPerEntry * t * 2.0 * call.n_frequency, 9,
                     27);
}

bool on_cpu(const LayerCall& call) { return call.device == c10::DeviceType::CPU; }

// The fused CPU kernels run (not the ATen implementation): their routes include Folded and their backward decides
// the spectrum gradient first.
bool fused_cpu(const LayerCall& call) { return on_cpu(call) && !detail::generic_kernels_on_cpu(); }

bool dense_dtypes(const LayerCall& call) {
  return call.spectrum_dtype == at::ScalarType::Undefined || detail::dense_capable(call.dtype, call.spectrum_dtype);
}
}  // namespace

void set_linear_path(LinearPath path) { forced_linear_path.store(path); }
LinearPath linear_path() { return forced_linear_path.load(); }
void set_inference_cache(bool enabled) { inference_cache_enabled.store(enabled); }
void set_keep_delta(bool enabled) { keep_delta_enabled.store(enabled); }
bool keep_delta() { return keep_delta_enabled.load(); }

bool inference_cache() { return inference_cache_enabled.load(); }

InferenceCache inference_cache_for(const LayerCall& call) {
  if (!inference_cache_enabled.load(std::memory_order_relaxed) || call.training) return InferenceCache::None;
  switch (forced_linear_path.load(std::memory_order_relaxed)) {
    case LinearPath::Spectral:
    case LinearPath::Folded: return InferenceCache::None;  // the forced route runs, as in training
    case LinearPath::Dense: return InferenceCache::Delta;  // the dense route without its per-call delta_W
    case LinearPath::Auto: break;
  }
  if (on_cpu(call)) {
    // W + delta_W (one GEMM per call) where fingerprinting W costs less than the spectral forward; float32 and
    // float64 only (a half-precision W + delta_W loses the adapter: docs/gpu.md, Numerics).
    const bool full = call.dtype == at::kFloat || call.dtype == at::kDouble;
    return full && kFingerprintNsPerPoint * static_cast<double>(call.out_features) *
                           static_cast<double>(call.in_features) <
                       kInferencePipelineShare *
                           pipeline_ns(call.tokens, call.out_features, call.in_features, call.n_frequency)
               ? InferenceCache::MergedWeight
               : InferenceCache::None;
  }
  // On a GPU a cached delta_W in the model's dtype, applied by a second GEMM beside the base's, costs one more
  // read of a weight-sized matrix per call; the spectral forward costs two row transforms and host
  // synchronisations. (W + delta_W would need W's fingerprint per call: a full read and a synchronisation.)
  const double t = static_cast<double>(std::max<int64_t>(call.tokens, 1));
  const GpuCost cached = gpu_gemm(call.dtype, t, static_cast<double>(call.in_features),
                                  static_cast<double>(call.out_features)) +
                         device_work(kGpuNsPerByte * t * static_cast<double>(call.out_features) * 6.0, 1, 1);  // add
  return cached.wall() < gpu_route(call, LinearPath::Spectral, RoutePass::Forward).wall() ? InferenceCache::Delta
                                                                                           : InferenceCache::None;
}

LayerPlan plan_layer_call(const LayerCall& call, const LayerFacts& facts) {
  const auto x = call.dtype, spectrum = call.spectrum_dtype == at::ScalarType::Undefined ? x : call.spectrum_dtype;
  const bool full = (x == at::kFloat || x == at::kDouble) && spectrum == x;
  const bool half = (x == at::kHalf || x == at::kBFloat16) && spectrum == at::kFloat;
  LayerPlan plan;
  if (facts.single_adapter && facts.plain_base && facts.same_device && facts.weight_dtype == x && (full || half)) {
    switch (call.training || !facts.may_cache ? InferenceCache::None : inference_cache_for(call)) {
      case InferenceCache::MergedWeight: plan.kind = LayerPlan::Kind::FusedMergedWeight; break;
      case InferenceCache::Delta: plan.kind = LayerPlan::Kind::FusedDelta; break;
      case InferenceCache::None: plan.kind = LayerPlan::Kind::Fused; break;
    }
    return plan;
  }
  // PEFT's composition: the adapter runs in the spectrum's dtype on its device.
  LayerCall adapter = call;
  adapter.dtype = spectrum;
  plan.adapter_route = adapter_path(adapter, facts.delta_cached);
  return plan;
}

LinearPath adapter_path(const LayerCall& call, bool delta_cached) {
  switch (forced_linear_path.load(std::memory_order_relaxed)) {
    case LinearPath::Spectral: return LinearPath::Spectral;
    case LinearPath::Dense:
    case LinearPath::Folded: return LinearPath::Dense;
    case LinearPath::Auto: break;
  }
  const double d1 = static_cast<double>(call.out_features), d2 = static_cast<double>(call.in_features);
  const double t = static_cast<double>(std::max<int64_t>(call.tokens, 1));
  if (on_cpu(call)) {
    const double spectral = t * (kAdapterFftNsPerPointLog * (d1 * std::log2(d1 + 1) + d2 * std::log2(d2 + 1)) +
                                 kAdapterGatherNsPerCoefficient * static_cast<double>(call.n_frequency));
    double dense = t * d1 * d2 * kAdapterGemmNsPerMultiplyAdd;
    if (!delta_cached) dense += kAdapterDeltaNsPerPointLog * d1 * d2 * std::log2(d1 * d2 + 1);
    return spectral <= dense ? LinearPath::Spectral : LinearPath::Dense;
  }
  // The adapter runs in the spectrum's dtype (PEFT's composition casts x to it), float32 unless float64.
  LayerCall adapter = call;
  if (adapter.dtype != at::kDouble) adapter.dtype = at::kFloat;
  const GpuCost gemm = gpu_gemm(adapter.dtype, t, d2, d1);
  GpuCost spectral = gpu_spectral_apply(adapter, call.in_features, call.out_features);
  GpuCost dense = delta_cached ? gemm : gemm + gpu_delta_build(adapter);
  if (call.training) {  // the backward of each: grad_x by the same route, grad_c by its own
    spectral = spectral + gpu_spectral_apply(adapter, call.out_features, call.in_features) +
               gpu_grad_spectrum(adapter, false);
    dense = dense + gemm + gpu_grad_spectrum(adapter, true);
  }
  return spectral.wall() <= dense.wall() ? LinearPath::Spectral : LinearPath::Dense;
}

LinearRoutes linear_backward_routes(const LayerCall& call, bool need_grad_x, bool need_grad_spectrum) {
  LinearRoutes routes;
  if (fused_cpu(call)) {  // linear_backward_cpu: the spectrum gradient first, grad_x beside a correlation or alone
    const bool folded_c = need_grad_spectrum && detail::linear_grad_spectrum_is_dense(call, true);
    const bool correlate = need_grad_spectrum && !folded_c;
    routes.grad_spectrum = folded_c ? LinearPath::Folded : LinearPath::Spectral;
    if (need_grad_x) {
      routes.grad_x = detail::linear_route(call, correlate ? RoutePass::GradXBesideCorrelation : RoutePass::GradX);
    }
    return routes;
  }
  // linear_backward_generic: grad_x first (densely wherever the route is not spectral and the dtypes allow it), then
  // the spectrum gradient, knowing whether g's row transforms are made for grad_x anyway.
  if (need_grad_x && dense_dtypes(call) && detail::linear_route(call, RoutePass::GradX) != LinearPath::Spectral) {
    routes.grad_x = LinearPath::Dense;
  }
  const bool grad_x_is_spectral = need_grad_x && routes.grad_x == LinearPath::Spectral;
  if (need_grad_spectrum && detail::linear_grad_spectrum_is_dense(call, grad_x_is_spectral)) {
    routes.grad_spectrum = LinearPath::Dense;
  }
  return routes;
}

LinearRoutes linear_routes(const LayerCall& call) {
  LinearRoutes routes = call.training ? linear_backward_routes(call, true, true) : LinearRoutes{};
  routes.forward = detail::linear_route(call, RoutePass::Forward);
  if (!fused_cpu(call) && routes.forward != LinearPath::Spectral) {
    // The ATen implementation has no folded route, and runs PEFT's composition where the dtypes exclude the dense one.
    routes.forward = dense_dtypes(call) ? LinearPath::Dense : LinearPath::Spectral;
  }
  return routes;
}

std::vector<RouteEstimate> linear_route_estimates(const LayerCall& call) {
  // The same passes, in the same order and with the same sharing, as the backward linear_routes describes; the
  // costs are those linear_route and linear_grad_spectrum_is_dense compare (set_linear_path changes neither).
  std::vector<RouteEstimate> out;
  const auto add = [&out](const char* pass, const detail::RouteCosts& costs) {
    out.push_back({pass, LinearPath::Spectral, costs.spectral});
    out.push_back({pass, LinearPath::Dense, costs.dense});
    if (std::isfinite(costs.folded)) out.push_back({pass, LinearPath::Folded, costs.folded});
  };
  add("forward", detail::linear_route_costs(call, RoutePass::Forward));
  if (!call.training) return out;
  if (on_cpu(call)) {
    const auto grad_c = detail::grad_spectrum_costs(call, true);
    add("grad_x", detail::linear_route_costs(
                      call, grad_c.dense < grad_c.spectral ? RoutePass::GradX : RoutePass::GradXBesideCorrelation));
    out.push_back({"grad_spectrum", LinearPath::Spectral, grad_c.spectral});
    out.push_back({"grad_spectrum", LinearPath::Folded, grad_c.dense});
    return out;
  }
  const auto grad_x = detail::linear_route_costs(call, RoutePass::GradX);
  add("grad_x", grad_x);
  const auto grad_c = detail::grad_spectrum_costs(call, grad_x.spectral < grad_x.dense);
  out.push_back({"grad_spectrum", LinearPath::Spectral, grad_c.spectral});
  out.push_back({"grad_spectrum", LinearPath::Dense, grad_c.dense});
  return out;
}

namespace detail {
namespace {
double half_bins(int64_t d1, int64_t d2) {
  return static_cast<double>(d1 / 2 + 1) * static_cast<double>(d2 / 2 + 1);
}
double folded_gemm_ns(int64_t tokens, int64_t d1, int64_t d2) {
  return static_cast<double>(std::max<int64_t>(tokens, 1)) * 2.0 * half_bins(d1, d2) * kFoldedNsPerMultiplyAdd;
}

RouteCosts cpu_route_costs(const LayerCall& call, RoutePass pass) {
  const int64_t tokens = call.tokens, out_features = call.out_features, in_features = call.in_features,
                n_frequency = call.n_frequency;
  const double d1 = static_cast<double>(out_features), d2 = static_cast<double>(in_features);
  const double points = d1 * d2, n = static_cast<double>(n_frequency);
  const double pipeline_share =
      pass == RoutePass::GradXBesideCorrelation ? kGradXBesideCorrelationShare : kForwardPipelineShare;
  RouteCosts costs;
  costs.spectral = pipeline_share * pipeline_ns(tokens, out_features, in_features, n_frequency);
  costs.dense = kMergeNsPerPointLog * points * std::log2(points + 1) + kMergeNsPerCoefficient * n;
  costs.folded =
      folded_gemm_ns(tokens, out_features, in_features) +
      static_cast<double>(std::max<int64_t>(tokens, 1)) * kFoldedNsPerPointLog *
          (d1 * std::log2(d1 + 1) + d2 * std::log2(d2 + 1)) +
      kFoldedBuildNsPerPoint * 2.0 * half_bins(out_features, in_features) + kFoldedBuildNsPerCoefficient * n;
  return costs;
}
}  // namespace

RouteCosts linear_route_costs(const LayerCall& call, RoutePass pass) {
  if (on_cpu(call)) return cpu_route_costs(call, pass);
  RouteCosts costs;
  costs.spectral = gpu_route(call, LinearPath::Spectral, pass).wall();
  costs.dense = gpu_route(call, LinearPath::Dense, pass).wall();
  return costs;
}

LinearPath linear_route(const LayerCall& call, RoutePass pass) {
  const auto forced = forced_linear_path.load(std::memory_order_relaxed);
  if (forced != LinearPath::Auto) return forced;
  const auto costs = linear_route_costs(call, pass);
  if (on_cpu(call)) {
    if (costs.spectral <= costs.dense && costs.spectral <= costs.folded) return LinearPath::Spectral;
    return costs.dense < costs.folded ? LinearPath::Dense : LinearPath::Folded;
  }
  return costs.spectral < costs.dense ? LinearPath::Spectral : LinearPath::Dense;
}

RouteCosts grad_spectrum_costs(const LayerCall& call, bool grad_x_is_spectral) {
  RouteCosts costs;
  if (on_cpu(call)) {
    // Both need x's row transforms; the folded GEMMs replace the tokens x n products (and g's transforms, shared
    // with a pipeline grad_x, are counted for neither).
    const double t = static_cast<double>(std::max<int64_t>(call.tokens, 1));
    costs.dense = folded_gemm_ns(call.tokens, call.out_features, call.in_features) +
                  kFoldedBuildNsPerCoefficient * call.n_frequency;
    costs.spectral = t * static_cast<double>(call.n_frequency) * kCorrelateNsPerCoefficient;
    return costs;
  }
  auto spectral = gpu_grad_spectrum(call, false);
  if (grad_x_is_spectral) {  // g's row transform is shared with a spectral grad_x
    spectral.device -= 0.5 * kGpuSpectralNsPerPoint * static_cast<double>(std::max<int64_t>(call.tokens, 1)) *
                       static_cast<double>(call.out_features);
  }
  costs.spectral = spectral.wall();
  costs.dense = gpu_grad_spectrum(call, true).wall();
  return costs;
}


bool linear_grad_spectrum_is_dense(const LayerCall& call, bool grad_x_is_spectral) {
  switch (forced_linear_path.load(std::memory_order_relaxed)) {
    case LinearPath::Spectral: return false;
    case LinearPath::Dense:
    case LinearPath::Folded: return true;
    case LinearPath::Auto: break;
  }
  const auto costs = grad_spectrum_costs(call, grad_x_is_spectral);
  return costs.dense < costs.spectral;
}
bool keep_dense_operand(const LayerCall& call) {
  if (!keep_delta_enabled.load(std::memory_order_relaxed) || !call.training) return false;
  if (fused_cpu(call)) return false;  // the fused CPU kernels have their own routes
  const auto routes = linear_routes(call);
  return routes.forward == LinearPath::Dense && routes.grad_x == LinearPath::Dense;
}
}  // namespace detail

}  // namespace fourierft
