// Raw-pointer views (head_math.h) of ATen tensors, shared by the CPU and CUDA glue.
#pragma once

#include "elementwise.h"
#include "head_math.h"

namespace obd_fast {

template <typename T>
const T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

template <typename T>
T* mut_ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

template <typename T>
head::HeadArgs<T> make_head_args(const HeadInputs& in) {
  head::HeadArgs<T> a;
  a.z = in.z.data_ptr<T>();
  a.target = ptr_or_null<T>(in.target);
  a.noise = ptr_or_null<T>(in.noise);
  a.weight = ptr_or_null<T>(in.weight);
  a.scalars = ptr_or_null<T>(in.scalars);
  a.max_action = static_cast<T>(in.max_action);
  a.scale = static_cast<T>(in.scale);
  a.n = in.z.size(0);
  a.act_dim = in.act_dim;
  a.out = in.z.size(1);
  return a;
}

}  // namespace obd_fast
