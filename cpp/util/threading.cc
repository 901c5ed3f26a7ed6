// threading.cc: a small thread pool in which the caller works too.
//
// Why not OpenMP: on a shared 2-core machine a team barrier waits for every thread to arrive,
// so one preempted worker stalls each of the ~10 parallel regions per layer for a scheduler
// time slice (measured: Gemma 3 270M decode fell from 42 to ~1 token/s while another process
// was busy). Here a job is a set of parts taken from one atomic counter; the caller takes parts
// too and returns when all parts are *done*, never waiting for a worker that has not started.
// A late worker finds no part left and goes back to waiting.
#include "util/threading.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <fstream>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SPARK_PAUSE() _mm_pause()
#else
#define SPARK_PAUSE() ((void)0)
#endif

namespace spark {
namespace {

int CountPhysicalCores() {
  std::set<std::pair<std::string, std::string>> cores;  // (package, core id)
  const unsigned logical = std::max(1u, std::thread::hardware_concurrency());
  for (unsigned cpu = 0; cpu < logical; ++cpu) {
    const std::string base = "/sys/devices/system/cpu/cpu" + std::to_string(cpu) + "/topology/";
    std::ifstream pkg(base + "physical_package_id"), core(base + "core_id");
    std::string p, c;
    if (!(pkg >> p) || !(core >> c)) return static_cast<int>(logical);
    cores.emplace(p, c);
  }
  return std::max<int>(1, static_cast<int>(cores.size()));
}

// Spin this many pause loops (~30-60 us) before sleeping: long enough to bridge the gap
// between two kernels of one token, short enough not to burn a core between tokens.
constexpr int kSpinIterations = 20000;

// Parts per thread: more parts than threads, taken dynamically, so a preempted thread holds up
// only a small part while the running ones take the rest.
constexpr size_t kPartsPerThread = 4;

// True on a pool worker, and on a caller while it runs parts: a ParallelFor from inside a part
// runs inline (a pool holds one job at a time).
thread_local bool t_in_job = false;

}  // namespace

class Workers {
 public:
  explicit Workers(int workers) {
    for (int i = 0; i < workers; ++i) threads_.emplace_back([this] { WorkerLoop(); });
  }
  ~Workers() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
      state_.fetch_add(kGenOne, std::memory_order_release);
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }
  int workers() const { return static_cast<int>(threads_.size()); }

  // Runs fn(part) for part < parts on the caller and the workers; returns when all are done.
  void Run(int parts, const std::function<void(int)>& fn) {
    fn_ = &fn;
    done_.store(0, std::memory_order_relaxed);
    const uint64_t gen = (state_.load(std::memory_order_relaxed) >> 32) + 1;
    state_.store((gen << 32) | (static_cast<uint64_t>(parts) << 16), std::memory_order_release);
    if (sleepers_.load(std::memory_order_acquire) > 0) {
      std::lock_guard<std::mutex> lock(mu_);
      cv_.notify_all();
    }
    t_in_job = true;
    WorkOn(gen);
    t_in_job = false;
    int spins = 0;
    while (done_.load(std::memory_order_acquire) < parts) {
      if (++spins < kSpinIterations) {
        SPARK_PAUSE();
      } else {
        std::this_thread::yield();  // a worker holding a part was preempted: let it run
      }
    }
  }

 private:
  static constexpr uint64_t kGenOne = uint64_t{1} << 32;

  // Claims and runs parts of generation `gen` until none is left.
  void WorkOn(uint64_t gen) {
    for (;;) {
      uint64_t s = state_.load(std::memory_order_acquire);
      for (;;) {
        const uint64_t parts = (s >> 16) & 0xFFFF, next = s & 0xFFFF;
        if ((s >> 32) != gen || next >= parts) return;
        if (state_.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel)) {
          // The job cannot finish (nor fn_ change) before this claimed part is done.
          (*fn_)(static_cast<int>(next));
          done_.fetch_add(1, std::memory_order_acq_rel);
          break;
        }
      }
    }
  }

  void WorkerLoop() {
    t_in_job = true;
    uint64_t seen = 0;
    for (;;) {
      uint64_t gen = state_.load(std::memory_order_acquire) >> 32;
      for (int i = 0; gen == seen && i < kSpinIterations; ++i) {
        SPARK_PAUSE();
        gen = state_.load(std::memory_order_acquire) >> 32;
      }
      if (gen == seen) {
        std::unique_lock<std::mutex> lock(mu_);
        sleepers_.fetch_add(1, std::memory_order_acq_rel);
        cv_.wait(lock, [&] { return (state_.load(std::memory_order_acquire) >> 32) != seen || stop_; });
        sleepers_.fetch_sub(1, std::memory_order_acq_rel);
        gen = state_.load(std::memory_order_acquire) >> 32;
      }
      if (stop_) return;
      seen = gen;
      WorkOn(gen);
    }
  }

  // state_: generation (32 bits) | parts (16) | next unclaimed part (16).
  std::atomic<uint64_t> state_{0};
  std::atomic<int> done_{0};
  std::atomic<int> sleepers_{0};
  const std::function<void(int)>* fn_ = nullptr;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

int PhysicalCores() {
  static const int n = CountPhysicalCores();
  return n;
}

ThreadPool::ThreadPool(int threads) : threads_(std::max(1, std::min(threads, kMaxThreads))) {}
ThreadPool::~ThreadPool() = default;

void ThreadPool::set_threads(int n) { threads_.store(std::max(1, std::min(n, kMaxThreads)), std::memory_order_relaxed); }

int ThreadPool::MaxPartsFor(int threads) { return threads <= 1 ? 1 : threads * static_cast<int>(kPartsPerThread); }

void ThreadPool::ParallelFor(size_t n, size_t granule, const std::function<void(size_t, size_t, int)>& fn) {
  if (n == 0) return;
  granule = std::max<size_t>(1, granule);
  const size_t granules = (n + granule - 1) / granule;
  const int threads = this->threads();  // read once: parts and workers agree
  const int parts = static_cast<int>(std::min<size_t>(MaxPartsFor(threads), granules));
  if (parts <= 1 || t_in_job) {  // nested calls run inline
    fn(0, n, 0);
    return;
  }
  auto run_part = [&](int t) {
    const size_t g0 = granules * t / parts, g1 = granules * (t + 1) / parts;
    const size_t begin = g0 * granule, end = std::min(n, g1 * granule);
    if (begin < end) fn(begin, end, t);
  };
  // One job at a time: a second caller thread (two Python threads, the GIL released) runs its
  // parts inline instead of overwriting the running job.
  std::unique_lock<std::mutex> job(job_mu_, std::try_to_lock);
  if (!job.owns_lock()) {
    for (int t = 0; t < parts; ++t) run_part(t);
    return;
  }
  // Workers only grow: a smaller thread count just uses fewer parts.
  if (!workers_ || workers_->workers() < threads - 1) {
    workers_.reset();
    workers_ = std::make_unique<Workers>(threads - 1);
  }
  workers_->Run(parts, run_part);
}

ThreadPool& DefaultPool() {
  static ThreadPool pool(PhysicalCores());
  return pool;
}

}  // namespace spark
