// checked.h: size arithmetic on sizes that come from outside (a file's shapes, a caller's
// context length or chunk): a product that would wrap around throws instead, so a buffer is
// never allocated smaller than the loops that index it.
#ifndef SPARK_UTIL_CHECKED_H_
#define SPARK_UTIL_CHECKED_H_

#include <stddef.h>

#include <initializer_list>
#include <stdexcept>
#include <string>

namespace spark {

// The product of `factors`; std::overflow_error naming `what` if it exceeds size_t.
inline size_t CheckedProduct(std::initializer_list<size_t> factors, const std::string& what) {
  size_t p = 1;
  for (size_t f : factors)
    if (__builtin_mul_overflow(p, f, &p)) throw std::overflow_error(what + ": size overflows");
  return p;
}

// a + b; std::overflow_error naming `what` if it exceeds size_t.
inline size_t CheckedSum(size_t a, size_t b, const std::string& what) {
  size_t s;
  if (__builtin_add_overflow(a, b, &s)) throw std::overflow_error(what + ": size overflows");
  return s;
}

}  // namespace spark

#endif  // SPARK_UTIL_CHECKED_H_
