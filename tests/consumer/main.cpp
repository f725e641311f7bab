// Uses the installed headers and library: a conv3d forward and backward.
#include <vidgrad/ops/ops.h>

#include <iostream>

int main() {
  using namespace vidgrad;
  Generator gen(7);
  Tensor x = Tensor::randn({1, 2, 3, 5, 5}, gen);
  Tensor w = Tensor::randn({4, 2, 1, 3, 3}, gen).set_requires_grad(true);
  Tensor y = conv3d(x, w, {}, Conv3dOptions{.padding = {0, 1, 1}});
  sum(y).backward();
  const bool ok = y.shape() == Shape{1, 4, 3, 5, 5} && w.grad().defined();
  std::cout << (ok ? "consumer ok" : "consumer FAILED") << "\n";
  return ok ? 0 : 1;
}
