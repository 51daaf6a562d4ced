// The kernels against the float64 dense formula (PEFT's math computed with a complex ifft2).
#include "test_helpers.h"

#include <set>
#include <tuple>

using fourierft::testing::reference_delta_weight;
using fourierft::testing::relative_error;

namespace {

struct Case {
  int64_t out_features;
  int64_t in_features;
  int64_t n_frequency;
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << c.out_features << "x" << c.in_features << " n=" << c.n_frequency;
}

std::string case_name(const Case& c) {
  return std::to_string(c.out_features) + "x" + std::to_string(c.in_features) + "_n" +
         std::to_string(c.n_frequency);
}

// Odd, even, prime, rectangular shapes; n from 1 to out*in. 1022 x 1024: half spectra of 512 and 513 values per
// row, which the transforms' buffers pad to 520 (float) / 516 and 516 (double): 512 values are exactly 4 KiB
// (float) or 8 KiB (double) and take the extra cache line (fft_rows.h, padded_bins).
const std::vector<Case> kCases = {
    {1, 1, 1},        {7, 13, 1},       {7, 13, 40},      {7, 13, 91},     {13, 7, 91},
    {64, 48, 1},      {64, 48, 1000},   {64, 48, 3072},   {2, 9, 18},      {31, 17, 200},
    {768, 768, 1000}, {3072, 768, 3000}, {768, 3072, 500}, {6, 8, 48},     {97, 101, 5000},
    {1022, 1024, 1000},
};

class SpectralVsDense : public ::testing::TestWithParam<Case> {};

// Forward and both gradients of spectral_linear against autograd through the dense formula.
void check_against_dense(const Case& c, torch::ScalarType dtype, double tolerance) {
  torch::manual_seed(c.out_features * 1000 + c.in_features + c.n_frequency);
  const double alpha = 150.0;
  const auto indices = fourierft::entry_indices(c.out_features, c.in_features, c.n_frequency, 777);
  auto spectrum = torch::randn({c.n_frequency}, torch::dtype(dtype)).requires_grad_(true);
  auto x = torch::randn({3, 5, c.in_features}, torch::dtype(dtype)).requires_grad_(true);

  auto y = fourierft::spectral_linear(x, spectrum, indices, c.out_features, c.in_features, alpha);
  ASSERT_EQ(y.sizes(), (std::vector<int64_t>{3, 5, c.out_features}));
  ASSERT_EQ(y.scalar_type(), dtype);
  const auto g = torch::randn(y.sizes(), torch::dtype(dtype));
  const auto grads = torch::autograd::grad({(y * g).sum()}, {x, spectrum});

  auto c64 = spectrum.detach().to(torch::kDouble).requires_grad_(true);
  auto x64 = x.detach().to(torch::kDouble).requires_grad_(true);
  const auto w = reference_delta_weight(c64, indices, c.out_features, c.in_features, alpha);
  const auto y_ref = torch::matmul(x64, w.t());
  const auto ref_grads = torch::autograd::grad({(y_ref * g.to(torch::kDouble)).sum()}, {x64, c64});

  EXPECT_LE(relative_error(y, y_ref), tolerance) << "forward";
  EXPECT_LE(relative_error(grads[0], ref_grads[0]), tolerance) << "grad x";
  EXPECT_LE(relative_error(grads[1], ref_grads[1]), tolerance) << "grad spectrum";
}

TEST_P(SpectralVsDense, Float64) { check_against_dense(GetParam(), torch::kDouble, 1e-10); }
TEST_P(SpectralVsDense, Float32) { check_against_dense(GetParam(), torch::kFloat, 1e-5); }

TEST_P(SpectralVsDense, DeltaWeightAndItsGradient) {
  const Case c = GetParam();
  for (auto [dtype, tolerance] : {std::tuple{torch::kDouble, 1e-12}, std::tuple{torch::kFloat, 1e-5}}) {
    torch::manual_seed(7);
    const auto indices = fourierft::entry_indices(c.out_features, c.in_features, c.n_frequency, 123);
    auto spectrum = torch::randn({c.n_frequency}, torch::dtype(dtype)).requires_grad_(true);
    const auto dw = fourierft::delta_weight(spectrum, indices, c.out_features, c.in_features, 29.5);
    ASSERT_EQ(dw.scalar_type(), dtype);
    auto c64 = spectrum.detach().to(torch::kDouble).requires_grad_(true);
    const auto ref = reference_delta_weight(c64, indices, c.out_features, c.in_features, 29.5);
    EXPECT_LE(relative_error(dw, ref), tolerance);
    const auto g = torch::randn({c.out_features, c.in_features}, torch::kDouble);
    const auto grad = torch::autograd::grad({(dw * g.to(dtype)).sum()}, {spectrum})[0];
    const auto grad_ref = torch::autograd::grad({(ref * g).sum()}, {c64})[0];
    EXPECT_LE(relative_error(grad, grad_ref), tolerance);
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, SpectralVsDense, ::testing::ValuesIn(kCases),
                         [](const auto& info) { return case_name(info.param); });

TEST(SpectralLinear, NonContiguousInputAndVectorInput) {
  const auto indices = fourierft::entry_indices(20, 30, 100, 1);
  const auto spectrum = torch::randn({100}, torch::kDouble);
  const auto w = reference_delta_weight(spectrum, indices, 20, 30, 3.0);
  const auto x = torch::randn({30, 8}, torch::kDouble).t();  // [8, 30], not contiguous
  ASSERT_FALSE(x.is_contiguous());
  EXPECT_LE(relative_error(fourierft::spectral_linear(x, spectrum, indices, 20, 30, 3.0),
                           torch::matmul(x, w.t())),
            1e-12);
  const auto v = torch::randn({30}, torch::kDouble);
  const auto yv = fourierft::spectral_linear(v, spectrum, indices, 20, 30, 3.0);
  EXPECT_EQ(yv.sizes(), (std::vector<int64_t>{20}));
  EXPECT_LE(relative_error(yv, torch::matmul(w, v)), 1e-12);
}

TEST(SpectralLinear, HalfPrecisionInputsComputeInFloat32) {
  const auto indices = fourierft::entry_indices(64, 96, 300, 777);
  const auto spectrum = torch::randn({300});
  const auto x = torch::randn({4, 96});
  const auto expected = fourierft::spectral_linear(x, spectrum, indices, 64, 96, 150.0);
  for (auto dtype : {torch::kHalf, torch::kBFloat16}) {
    auto xh = x.to(dtype).requires_grad_(true);
    auto sp = spectrum.clone().requires_grad_(true);
    auto y = fourierft::spectral_linear(xh, sp, indices, 64, 96, 150.0);
    EXPECT_EQ(y.scalar_type(), dtype);
    // Rounding of x to half precision dominates; the FFT part itself runs in float32.
    EXPECT_LE(relative_error(y, expected), dtype == torch::kHalf ? 2e-3 : 1.5e-2);
    y.sum().backward();
    EXPECT_EQ(xh.grad().scalar_type(), dtype);
    EXPECT_EQ(sp.grad().scalar_type(), torch::kFloat);
    EXPECT_TRUE(torch::isfinite(sp.grad()).all().item<bool>());
  }
}

TEST(SpectralLinear, FiniteDifferenceGradients) {
  torch::manual_seed(3);
  const int64_t d1 = 5, d2 = 6, n = 12;
  const auto indices = fourierft::entry_indices(d1, d2, n, 42);
  auto spectrum = torch::randn({n}, torch::kDouble).requires_grad_(true);
  auto x = torch::randn({4, d2}, torch::kDouble).requires_grad_(true);
  const auto g = torch::randn({4, d1}, torch::kDouble);
  auto loss_of = [&](const torch::Tensor& xv, const torch::Tensor& cv) {
    return (fourierft::spectral_linear(xv, cv, indices, d1, d2, 2.5) * g).sum();
  };
  const auto grads = torch::autograd::grad({loss_of(x, spectrum)}, {x, spectrum});
  torch::NoGradGuard no_grad;
  const double eps = 1e-6;
  for (int64_t k = 0; k < n; ++k) {
    auto plus = spectrum.detach().clone(), minus = spectrum.detach().clone();
    plus[k] += eps;
    minus[k] -= eps;
    const double fd = (loss_of(x, plus) - loss_of(x, minus)).item<double>() / (2 * eps);
    EXPECT_NEAR(grads[1][k].item<double>(), fd, 1e-6) << "spectrum entry " << k;
  }
  for (int64_t i = 0; i < 4; ++i) {
    for (int64_t j = 0; j < d2; ++j) {
      auto plus = x.detach().clone(), minus = x.detach().clone();
      plus[i][j] += eps;
      minus[i][j] -= eps;
      const double fd = (loss_of(plus, spectrum) - loss_of(minus, spectrum)).item<double>() / (2 * eps);
      EXPECT_NEAR(grads[0][i][j].item<double>(), fd, 1e-6) << "x[" << i << "][" << j << "]";
    }
  }
}

TEST(SpectralLinear, FrozenSpectrumGivesOnlyInputGradient) {
  const auto indices = fourierft::entry_indices(16, 24, 50, 9);
  const auto spectrum = torch::randn({50}, torch::kDouble);  // no grad
  auto x = torch::randn({3, 24}, torch::kDouble).requires_grad_(true);
  fourierft::spectral_linear(x, spectrum, indices, 16, 24, 1.0).pow(2).sum().backward();
  const auto w = reference_delta_weight(spectrum, indices, 16, 24, 1.0);
  const auto y = torch::matmul(x.detach(), w.t());
  EXPECT_LE(relative_error(x.grad(), 2 * torch::matmul(y, w)), 1e-12);
}

TEST(EntryIndices, ShapeRangeDistinctAndDeterministic) {
  for (auto [d1, d2, n, seed] : {std::tuple<int64_t, int64_t, int64_t, int64_t>{768, 768, 1000, 777},
                                 {7, 13, 91, 0}, {3072, 768, 3000, 123456789}, {5, 3, 1, -1}}) {
    const auto e = fourierft::entry_indices(d1, d2, n, seed);
    ASSERT_EQ(e.sizes(), (std::vector<int64_t>{2, n}));
    ASSERT_EQ(e.scalar_type(), torch::kLong);
    EXPECT_GE(e.min().item<int64_t>(), 0);
    EXPECT_LT(e[0].max().item<int64_t>(), d1);
    EXPECT_LT(e[1].max().item<int64_t>(), d2);
    const auto flat = e[0] * d2 + e[1];
    EXPECT_EQ(std::get<0>(at::_unique(flat)).numel(), n) << "entries must be distinct";
    EXPECT_TRUE(torch::equal(e, fourierft::entry_indices(d1, d2, n, seed)));
  }
  EXPECT_FALSE(torch::equal(fourierft::entry_indices(64, 64, 100, 1),
                            fourierft::entry_indices(64, 64, 100, 2)));
  // A shorter n is a prefix of a longer one (the same permutation, cut earlier), as in PEFT.
  EXPECT_TRUE(torch::equal(fourierft::entry_indices(64, 48, 10, 777),
                           fourierft::entry_indices(64, 48, 500, 777).slice(1, 0, 10)));
}

TEST(OpErrors, EveryCheckNamesTheValues) {
  const auto idx = fourierft::entry_indices(8, 6, 10, 777);
  const auto c = torch::randn({10});
  const auto x = torch::randn({2, 6});
  EXPECT_ERROR_CONTAINS(fourierft::entry_indices(0, 6, 1, 0), "out_features=0", "in_features=6");
  EXPECT_ERROR_CONTAINS(fourierft::entry_indices(8, 6, 49, 0), "n_frequency=49", "[1, 48]");
  EXPECT_ERROR_CONTAINS(fourierft::entry_indices(8, 6, 0, 0), "n_frequency=0");
  EXPECT_ERROR_CONTAINS(fourierft::spectral_linear(x, c.view({2, 5}), idx, 8, 6, 1.0),
                        "spectrum must be 1-D", "[2, 5]");
  EXPECT_ERROR_CONTAINS(fourierft::spectral_linear(x, torch::randn({49}), idx, 8, 6, 1.0),
                        "n_frequency=49");
  EXPECT_ERROR_CONTAINS(fourierft::spectral_linear(x, c, idx.to(torch::kInt), 8, 6, 1.0),
                        "indices must be int64", "Int");
  EXPECT_ERROR_CONTAINS(fourierft::spectral_linear(x, c, idx.slice(1, 0, 9), 8, 6, 1.0),
                        "[2, 10]", "[2, 9]");
  auto bad_u = idx.clone();
  bad_u[0][3] = 8;
  EXPECT_ERROR_CONTAINS(fourierft::spectral_linear(x, c, bad_u, 8, 6, 1.0), "indices[0]",
                        "[0, 8)", "8]");
  auto bad_v = idx.clone();
  bad_v[1][0] = -1;
  EXPECT_ERROR_CONTAINS(fourierft::delta_weight(c, bad_v, 8, 6, 1.0), "indices[1]", "[0, 6)",
                        "[-1,");
  EXPECT_ERROR_CONTAINS(fourierft::spectral_linear(torch::randn({2, 7}), c, idx, 8, 6, 1.0),
                        "in_features=6", "[2, 7]");
  EXPECT_ERROR_CONTAINS(fourierft::spectral_linear(torch::ones({2, 6}, torch::kLong), c, idx, 8, 6, 1.0),
                        "floating point", "Long");
  EXPECT_ERROR_CONTAINS(fourierft::delta_weight(c.to(torch::kLong), idx, 8, 6, 1.0),
                        "floating point", "Long");
  EXPECT_ERROR_CONTAINS(fourierft::delta_weight(c, idx, 8, -6, 1.0), "in_features=-6");
  EXPECT_ERROR_CONTAINS(fourierft::spectral_linear(x.to(torch::kMeta), c, idx, 8, 6, 1.0),
                        "same device", "meta");
}

}  // namespace
