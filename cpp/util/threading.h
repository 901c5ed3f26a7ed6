// threading.h: the process-wide kernel thread count and a parallel-for over [0, n).
//
// Kernels split their *outputs* between threads (rows of a matvec, column tiles of a vec-mat),
// never a reduction, so results do not depend on the thread count. Threads come from a small
// pool of our own (threading.cc says why not OpenMP); the caller works too. A call with one
// thread, tiny work, or from inside a pool job runs inline on the caller.
#ifndef SPARK_UTIL_THREADING_H_
#define SPARK_UTIL_THREADING_H_

#include <stddef.h>

#include <functional>

namespace spark {

// Physical cores of this machine (SMT siblings counted once); at least 1.
int PhysicalCores();
// Threads the kernels use; defaults to PhysicalCores().
int NumThreads();
void SetNumThreads(int n);

// Calls fn(begin, end, part) on contiguous parts of [0, n), each a multiple of `granule` (except
// the last); parts <= MaxParts(). Each part runs on exactly one thread, so per-part scratch
// indexed by `part` needs no locking. Safe from several caller threads: while the pool runs one
// caller's job, another caller runs its parts inline.
// Upper bound on the parts of one ParallelFor (for per-part scratch).
int MaxParts();

void ParallelFor(size_t n, size_t granule, const std::function<void(size_t, size_t, int)>& fn);

}  // namespace spark

#endif  // SPARK_UTIL_THREADING_H_
