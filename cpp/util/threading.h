// threading.h: a thread pool object and its parallel-for over [0, n).
//
// Each engine owns one ThreadPool and passes it down to the kernels (gemma.cpp's
// ThreadingContext is the model): its thread count and part bound belong to that engine, so two
// engines with different thread counts in one process never size or index each other's per-part
// scratch. Kernels called on their own (the ops bindings, benchmarks) use DefaultPool().
//
// Kernels split their *outputs* between parts (rows of a matvec, column tiles of a vec-mat),
// never a reduction, so results do not depend on the thread count. Threads come from a pool of
// our own (threading.cc says why not OpenMP); the caller works too. A call with one thread, tiny
// work, or from inside a pool job runs inline on the caller.
#ifndef SPARK_UTIL_THREADING_H_
#define SPARK_UTIL_THREADING_H_

#include <stddef.h>

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>

namespace spark {

// Physical cores of this machine (SMT siblings counted once); at least 1.
int PhysicalCores();

class Workers;  // the worker threads (threading.cc)

class ThreadPool {
 public:
  static constexpr int kMaxThreads = 1024;

  // threads: clamped to [1, kMaxThreads]. Workers start at the first parallel job.
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int threads() const { return threads_.load(std::memory_order_relaxed); }
  // Not while this pool runs a job whose caller sized scratch by MaxParts() (the engine holds
  // its busy lock for both). Clamped as in the constructor.
  void set_threads(int n);
  // Upper bound on the parts of one ParallelFor (for per-part scratch): MaxPartsFor(threads()).
  int MaxParts() const { return MaxPartsFor(threads()); }
  static int MaxPartsFor(int threads);

  // Calls fn(begin, end, part) on contiguous parts of [0, n), each a multiple of `granule`
  // (except the last); part < MaxParts(). Each part runs on exactly one thread, so per-part
  // scratch indexed by `part` needs no locking. Safe from several caller threads: while the pool
  // runs one caller's job, another caller runs its parts inline.
  void ParallelFor(size_t n, size_t granule, const std::function<void(size_t, size_t, int)>& fn);

 private:
  std::atomic<int> threads_;
  std::mutex job_mu_;                // held by the caller whose job the workers run
  std::unique_ptr<Workers> workers_;  // guarded by job_mu_; only grows
};

// The pool of kernels called outside an engine; PhysicalCores() threads until set.
ThreadPool& DefaultPool();

}  // namespace spark

#endif  // SPARK_UTIL_THREADING_H_
