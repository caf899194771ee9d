#ifndef TCPAUDIT_DRAIN_HH
#define TCPAUDIT_DRAIN_HH

#include <napi.h>

#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

struct ring_buffer;

// Counters shared by the drain thread (writer) and stats() on the JS thread (reader).
struct DrainStats {
  std::atomic<uint64_t> events{0};        // records handed to JS
  std::atomic<uint64_t> batches{0};       // batches handed to JS
  std::atomic<uint64_t> userDropped{0};   // records dropped because JS was too slow
  std::atomic<uint64_t> droppedBatches{0};
};

// A batch on its way to JS: packed records, their count and the clock offset at send time.
struct Batch {
  std::vector<uint8_t> bytes;
  uint32_t count = 0;
  int64_t clockOffsetNs = 0;
};

// Owns the thread that drains the ring buffer every ~10 ms and sends batches to JS through a
// bounded thread-safe function. The drain never blocks on JS: while JS's queue is full it
// keeps its batch and stops reading the ring, so records wait in the kernel's buffer, whose
// overflow the BPF side counts. Only at stop is a batch JS cannot take dropped (and counted).
class Drain {
public:
  // JS thread: opens a reader on the ring buffer map and starts the thread. `tsfn` is taken
  // over: the drain thread releases it when it ends. Throws std::runtime_error.
  Drain(int eventsFd, Napi::ThreadSafeFunction tsfn, DrainStats &stats);
  // JS thread: wakes the thread through the eventfd, lets it drain once more, joins it, then
  // frees the reader.
  ~Drain();
  Drain(const Drain &) = delete;
  Drain &operator=(const Drain &) = delete;

  // JS thread: while paused the thread leaves the ring alone (it still notices a stop).
  void setPaused(bool paused) { mPaused.store(paused); }

  // Called by libbpf on the drain thread for each record.
  static int onSample(void *ctx, void *data, size_t size);

private:
  void run();    // drain thread
  // Drain thread: hands the current batch to JS; false when JS's queue is full and the batch
  // was kept. `stopping`: drop and count it instead of keeping it.
  bool flush(bool stopping = false);

  ring_buffer *mRing = nullptr;
  Napi::ThreadSafeFunction mTsfn;
  DrainStats &mStats;
  int mWakeFd = -1;
  bool mClosing = false;  // drain thread only: the TSFN said napi_closing
  std::atomic<bool> mPaused{false};
  Batch *mBatch = nullptr;
  std::thread mThread;
};

// Realtime minus boottime, in ns: add it to bpf_ktime_get_boot_ns() to get epoch ns.
int64_t clockOffsetNs();

#endif
