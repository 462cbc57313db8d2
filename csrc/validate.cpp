#include "validate.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <sstream>
#include <string>

namespace obd_fast {

namespace {

// Python's names and reprs, so that messages read as obd_fast/checks.py's.

std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "torch.float32";
    case at::kDouble: return "torch.float64";
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kLong: return "torch.int64";
    case at::kInt: return "torch.int32";
    case at::kShort: return "torch.int16";
    case at::kChar: return "torch.int8";
    case at::kByte: return "torch.uint8";
    case at::kBool: return "torch.bool";
    case at::kComplexHalf: return "torch.complex32";
    case at::kComplexFloat: return "torch.complex64";
    case at::kComplexDouble: return "torch.complex128";
    default: return std::string("torch.") + c10::toString(t);
  }
}

// A shape as a Python tuple: (3,), (2, 5); -1 entries as *.
std::string shape_str(at::IntArrayRef shape) {
  std::ostringstream s;
  s << "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) s << ", ";
    if (shape[i] < 0) {
      s << "*";
    } else {
      s << shape[i];
    }
  }
  s << (shape.size() == 1 ? ",)" : ")");
  return s.str();
}

// repr() of a Python float: the shortest digits that round-trip, in fixed notation for decimal
// exponents -4 .. 15 (0.0001, 2.5, 1.0) and scientific otherwise (1e-05, 1.5e+16).
std::string float_repr(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[64];
  const std::string sci(buf, std::to_chars(buf, buf + sizeof(buf), std::fabs(v), std::chars_format::scientific).ptr);
  const size_t e = sci.find('e');
  std::string digits = sci.substr(0, e);  // d or d.ddd
  if (digits.size() > 1) digits.erase(1, 1);
  const int exp = std::stoi(sci.substr(e + 1));
  std::string out;
  if (exp >= 16 || exp < -4) {
    const std::string mag = std::to_string(std::abs(exp));
    out = digits.substr(0, 1) + (digits.size() > 1 ? "." + digits.substr(1) : "") + (exp < 0 ? "e-" : "e+") +
          (mag.size() < 2 ? "0" : "") + mag;
  } else if (exp >= 0) {
    if (digits.size() < static_cast<size_t>(exp) + 1) digits.append(exp + 1 - digits.size(), '0');
    const std::string frac = digits.substr(exp + 1);
    out = digits.substr(0, exp + 1) + "." + (frac.empty() ? "0" : frac);
  } else {
    out = "0." + std::string(-exp - 1, '0') + digits;
  }
  return (std::signbit(v) ? "-" : "") + out;
}

std::string str_repr(c10::string_view s) { return "'" + std::string(s) + "'"; }

void check_tensor(const char* name, const at::Tensor& t, at::IntArrayRef shape, const at::Tensor* like = nullptr,
                  const char* like_name = "theta") {
  TORCH_CHECK_VALUE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
                    " must be float32 or float64, got ", dtype_name(t.scalar_type()));
  bool fits = t.dim() == static_cast<int64_t>(shape.size());
  for (size_t i = 0; fits && i < shape.size(); ++i) fits = shape[i] < 0 || shape[i] == t.size(i);
  TORCH_CHECK_VALUE(fits, name, " must have shape ", shape_str(shape), ", got ", shape_str(t.sizes()));
  TORCH_CHECK_VALUE(!(t.numel() == 0 && t.dim() > 1), name, " is empty (shape ", shape_str(t.sizes()),
                    "); at least one row is needed");
  if (like == nullptr) return;
  TORCH_CHECK_VALUE(t.scalar_type() == like->scalar_type(), name, " has dtype ", dtype_name(t.scalar_type()),
                    " but ", like_name, " has ", dtype_name(like->scalar_type()), "; all tensors must share one dtype");
  TORCH_CHECK_VALUE(t.device() == like->device(), name, " is on ", t.device(), " but ", like_name, " is on ",
                    like->device(), "; all tensors must be on one device");
}

// Optional noise of a head: none for the tanh head, else the given shape.
void check_noise(const Mlp& mlp, const at::Tensor& noise, const char* name, at::IntArrayRef shape,
                 const at::Tensor& like, const char* like_name) {
  if (!noise.defined()) return;
  TORCH_CHECK_VALUE(mlp.gaussian, name, " must be None for the 'tanh' head (it has no sampling)");
  check_tensor(name, noise, shape, &like, like_name);
}

StepKernel parse_step_kernel(c10::string_view v) {
  if (v == "auto") return StepKernel::kAuto;
  if (v == "grid") return StepKernel::kGrid;
  TORCH_CHECK_VALUE(v == "library", "step_kernel must be one of ('auto', 'grid', 'library'), got ", str_repr(v));
  return StepKernel::kLibrary;
}

}  // namespace

Mlp make_policy_net(int64_t obs_dim, int64_t act_dim, at::IntArrayRef hidden, c10::string_view head,
                    double max_action) {
  TORCH_CHECK_VALUE(head == "gaussian" || head == "tanh", "head must be one of ('gaussian', 'tanh'), got ",
                    str_repr(head));
  bool positive = obs_dim >= 1 && act_dim >= 1 && !hidden.empty();
  for (int64_t h : hidden) positive = positive && h >= 1;
  TORCH_CHECK_VALUE(positive, "obs_dim, act_dim and at least one hidden width must be >= 1, got obs_dim=", obs_dim,
                    ", act_dim=", act_dim, ", hidden=", hidden);
  TORCH_CHECK_VALUE(std::isfinite(max_action) && max_action > 0,
                    "max_action must be a positive finite number, got ", float_repr(max_action));
  const bool gaussian = head == "gaussian";
  std::vector<int64_t> widths{obs_dim};
  widths.insert(widths.end(), hidden.begin(), hidden.end());
  widths.push_back(gaussian ? 2 * act_dim : act_dim);
  return Mlp(std::move(widths), gaussian, max_action);
}

Precision parse_precision(c10::string_view v) {
  if (v == "native") return Precision::kNative;
  if (v == "bf16") return Precision::kBF16;
  TORCH_CHECK_VALUE(v == "tf32", "precision must be one of ('native', 'bf16', 'tf32'), got ", str_repr(v));
  return Precision::kTF32;
}

void check_precision(const Device& device, Precision precision, c10::string_view name, const at::Tensor& like) {
  if (precision == Precision::kNative) return;
  TORCH_CHECK_VALUE(like.scalar_type() == at::kFloat, "precision=", str_repr(name), " needs float32 tensors, got ",
                    dtype_name(like.scalar_type()));
  TORCH_CHECK_VALUE(precision != Precision::kTF32 || device.tf32,
                    "precision='tf32' (tensor-core float32 products) needs CUDA tensors, got ", like.device());
}

void check_theta(const Mlp& mlp, const at::Tensor& theta, const char* name) {
  check_tensor(name, theta, {mlp.num_params});
}

InnerConfig check_inner_problem(const Device& device, const Mlp& mlp, const at::Tensor& theta, const char* theta_name,
                                const at::Tensor& syn_obs, const at::Tensor& syn_act, const at::Tensor& noise,
                                const char* noise_name, const InnerArgs& args) {
  check_theta(mlp, theta, theta_name);
  check_tensor("syn_obs", syn_obs, {-1, mlp.widths[0]}, &theta, theta_name);
  const int64_t n = syn_obs.size(0);
  check_tensor("syn_act", syn_act, {n, mlp.act_dim}, &theta, theta_name);
  TORCH_CHECK_VALUE(args.steps >= 1, "steps must be an int >= 1 (and < 2**63), got ", args.steps);
  TORCH_CHECK_VALUE(std::isfinite(args.lr) && args.lr > 0, "lr must be finite and > 0.0, got ", float_repr(args.lr));
  TORCH_CHECK_VALUE(std::isfinite(args.momentum) && args.momentum >= 0 && args.momentum < 1,
                    "momentum must be finite and >= 0.0 and < 1.0, got ", float_repr(args.momentum));
  TORCH_CHECK_VALUE(std::isfinite(args.weight_decay) && args.weight_decay >= 0,
                    "weight_decay must be finite and >= 0.0, got ", float_repr(args.weight_decay));
  check_noise(mlp, noise, noise_name, {args.steps, n, mlp.act_dim}, theta, theta_name);
  InnerConfig cfg;
  cfg.steps = args.steps;
  cfg.lr = args.lr;
  cfg.momentum = args.momentum;
  cfg.weight_decay = args.weight_decay;
  cfg.precision = parse_precision(args.precision);
  check_precision(device, cfg.precision, args.precision, theta);
  if (args.checkpoint_every.has_value()) {
    const int64_t k = *args.checkpoint_every;
    TORCH_CHECK_VALUE(k >= 1, "checkpoint_every must be None or an int >= 1, got ", k);
    cfg.checkpoint_every = std::min(k, args.steps);
  }
  cfg.step_kernel = parse_step_kernel(args.step_kernel);
  TORCH_CHECK_VALUE(args.grid_blocks >= 0 && args.grid_blocks <= std::numeric_limits<int>::max(),
                    "grid_blocks must be an int >= 0 (0: one per multiprocessor), got ", args.grid_blocks);
  cfg.grid = GridLaunch{static_cast<int>(args.grid_blocks), args.grid_profile};
  TORCH_CHECK_VALUE(args.bf16_records == "compact" || args.bf16_records == "float",
                    "bf16_records must be one of ('compact', 'float'), got ", str_repr(args.bf16_records));
  // Compact records exist for the CPU's bf16 passes only; the CUDA passes keep float32 records.
  cfg.compact_records = cfg.precision == Precision::kBF16 && device.host && theta.scalar_type() == at::kFloat &&
                        args.bf16_records == "compact";
  return cfg;
}

void check_loss_batch(const Mlp& mlp, const at::Tensor& theta, const char* theta_name, const at::Tensor& obs,
                      const at::Tensor& target, const at::Tensor& weight, const at::Tensor& noise,
                      const char* noise_name) {
  check_tensor("obs", obs, {-1, mlp.widths[0]}, &theta, theta_name);
  const int64_t b = obs.size(0);
  if (target.defined()) check_tensor("target", target, {b, mlp.act_dim}, &theta, theta_name);
  if (weight.defined()) check_tensor("weight", weight, {b}, &theta, theta_name);
  check_noise(mlp, noise, noise_name, {b, mlp.act_dim}, theta, theta_name);
}

void check_tape(const Mlp& mlp, const InnerConfig& cfg, int64_t n, const at::Tensor& thetas, const at::Tensor& records,
                const at::Tensor& ck_thetas, const at::Tensor& ck_bufs, const at::Tensor& like) {
  using Shape = std::vector<int64_t>;
  const int64_t T = cfg.steps, P = mlp.num_params, R = mlp.record_size(n, cfg.compact_records);
  const int64_t C = cfg.keep_all() ? 0 : cfg.checkpoints();
  const Shape unused{0};
  check_tensor("thetas", thetas, C == 0 ? Shape{T + 1, P} : unused, &like, "grad_theta_T");
  check_tensor("records", records, C == 0 ? Shape{T, R} : unused, &like, "grad_theta_T");
  check_tensor("ck_thetas", ck_thetas, C > 0 ? Shape{C, P} : unused, &like, "grad_theta_T");
  check_tensor("ck_bufs", ck_bufs, C > 0 && cfg.momentum != 0.0 ? Shape{C, P} : unused, &like, "grad_theta_T");
}

void check_finite(const Device& device, const std::vector<std::pair<const char*, at::Tensor>>& tensors) {
  if (!device.may_read_values()) return;
  // One min/max pass per tensor (NaN propagates through both, an Inf is an end) and a single
  // read of all the results on the host.
  std::vector<at::Tensor> ends;
  std::vector<size_t> which;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i].second;
    if (!t.defined() || t.numel() == 0) continue;
    auto [lo, hi] = at::aminmax(t);
    ends.push_back(lo.to(at::kDouble));
    ends.push_back(hi.to(at::kDouble));
    which.push_back(i);
  }
  if (ends.empty()) return;
  const at::Tensor ok = at::isfinite(at::stack(ends)).view({-1, 2}).all(1).cpu();
  const bool* flags = ok.data_ptr<bool>();
  for (size_t k = 0; k < which.size(); ++k) {
    if (flags[k]) continue;
    const auto& [name, t] = tensors[which[k]];
    const int64_t bad = at::logical_not(at::isfinite(t)).sum().item<int64_t>();
    TORCH_CHECK_VALUE(false, name, " contains ", bad, " non-finite value(s) (NaN or Inf)");
  }
}

}  // namespace obd_fast
