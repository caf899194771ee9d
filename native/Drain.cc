#include "Drain.hh"

#include <bpf/libbpf.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

extern "C" {
#include "tcpaudit.h"
}

// How long the thread sleeps between drains when nothing wakes it: the BPF side submits
// without wake-ups (BPF_RB_NO_WAKEUP) until the ring is half full.
static constexpr int kDrainIntervalMs = 10;
// Upper bound on one batch, so a burst becomes several JS calls instead of one huge one.
static constexpr uint32_t kMaxBatchRecords = 4096;

static int64_t nowNs(clockid_t clock) {
  timespec ts{};
  clock_gettime(clock, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000LL + ts.tv_nsec;
}

// bpf_ktime_get_boot_ns() reads CLOCK_BOOTTIME; bracket the realtime read to halve the error.
int64_t clockOffsetNs() {
  int64_t before = nowNs(CLOCK_BOOTTIME);
  int64_t real = nowNs(CLOCK_REALTIME);
  int64_t after = nowNs(CLOCK_BOOTTIME);
  return real - (before + (after - before) / 2);
}

Drain::Drain(int eventsFd, Napi::ThreadSafeFunction tsfn, DrainStats &stats)
    : mTsfn(tsfn), mStats(stats) {
  mRing = ring_buffer__new(eventsFd, &Drain::onSample, this, nullptr);
  if (!mRing) {
    throw std::runtime_error(std::string("failed to create ring buffer reader: ") +
                             strerror(errno));
  }
  mWakeFd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (mWakeFd < 0) {
    int err = errno;
    ring_buffer__free(mRing);
    throw std::runtime_error(std::string("failed to create eventfd: ") + strerror(err));
  }
  mThread = std::thread(&Drain::run, this);
}

Drain::~Drain() {
  uint64_t one = 1;
  // A failed write only means the thread notices the stop at its next 10 ms tick.
  (void)!write(mWakeFd, &one, sizeof(one));
  if (mThread.joinable()) {
    mThread.join();
  }
  close(mWakeFd);
  ring_buffer__free(mRing);
  delete mBatch;  // flush() leaves none behind; kept for safety
}

int Drain::onSample(void *ctx, void *data, size_t size) {
  auto *self = static_cast<Drain *>(ctx);
  if (size < TCPAUDIT_RECORD_SIZE) {
    return 0;  // cannot happen with a matching object; the decoder checks the version
  }
  if (!self->mBatch) {
    self->mBatch = new Batch();
    self->mBatch->bytes.reserve(256 * TCPAUDIT_RECORD_SIZE);
  }
  auto *bytes = static_cast<const uint8_t *>(data);
  self->mBatch->bytes.insert(self->mBatch->bytes.end(), bytes, bytes + TCPAUDIT_RECORD_SIZE);
  self->mBatch->count++;
  if (self->mBatch->count >= kMaxBatchRecords && !self->flush()) {
    // JS is behind: stop consuming, so the records wait in the kernel's ring buffer (whose
    // overflow the kernel counts) instead of being dropped here.
    return -EAGAIN;
  }
  return 0;
}

bool Drain::flush(bool stopping) {
  Batch *batch = mBatch;
  if (!batch) {
    return true;
  }
  uint32_t count = batch->count;
  if (mClosing) {
    mBatch = nullptr;
    mStats.userDropped += count;
    mStats.droppedBatches++;
    delete batch;
    return true;
  }
  batch->clockOffsetNs = clockOffsetNs();

  // JS thread: wraps the bytes in a Buffer without copying; the Buffer frees the batch.
  auto toJs = [](Napi::Env env, Napi::Function callback, Batch *b) {
    if (env == nullptr || callback == nullptr) {
      delete b;  // the environment is going away
      return;
    }
    auto buffer = Napi::Buffer<uint8_t>::New(
        env, b->bytes.data(), b->bytes.size(),
        [](Napi::Env, uint8_t *, Batch *owner) { delete owner; }, b);
    callback.Call({buffer, Napi::Number::New(env, b->count),
                   Napi::BigInt::New(env, b->clockOffsetNs)});
  };

  napi_status status = mTsfn.NonBlockingCall(batch, toJs);
  if (status == napi_ok) {
    mBatch = nullptr;
    mStats.batches++;
    mStats.events += count;
    return true;
  }
  // napi_queue_full: JS is behind. The batch is kept and sent again later, unless the capture
  // is stopping: the JS thread is then waiting for this thread to end and cannot take it.
  if (status == napi_queue_full && !stopping) {
    return false;
  }
  // napi_closing (the environment is going away), or full at stop: dropped and counted.
  if (status == napi_closing) {
    mClosing = true;
  }
  mBatch = nullptr;
  mStats.userDropped += count;
  mStats.droppedBatches++;
  delete batch;
  return true;
}

void Drain::run() {
  pollfd fds[2] = {
      {ring_buffer__epoll_fd(mRing), POLLIN, 0},
      {mWakeFd, POLLIN, 0},
  };
  bool behind = false;  // JS's queue was full at the last try
  for (;;) {
    // Paused, or waiting for JS to catch up: watch only the stop eventfd, or a ready ring
    // would make poll() spin. Behind, retry soon: JS takes a batch in well under a ms.
    bool paused = mPaused.load();
    bool ringIdle = paused || behind;
    int timeout = behind ? 1 : kDrainIntervalMs;
    int n = ringIdle ? poll(&fds[1], 1, timeout) : poll(fds, 2, timeout);
    bool stopping = n > 0 && (fds[1].revents & POLLIN);
    if (paused && !stopping) {
      continue;
    }
    // A full batch still waiting for JS goes first; until it leaves, the ring is not read.
    bool full = mBatch && mBatch->count >= kMaxBatchRecords;
    if (behind && full && !stopping && !flush(false)) {
      continue;
    }

    // Consume even on a timeout: with BPF_RB_NO_WAKEUP the epoll fd rarely fires.
    int err = ring_buffer__consume(mRing);
    if (err < 0 && err != -EINTR && err != -EAGAIN) {
      // XXX: a consume error has no JS channel yet; it can only come from a corrupt ring.
      fprintf(stderr, "tcpaudit: failed to consume ring buffer: %s\n", strerror(-err));
    }
    behind = !flush(stopping);
    if (stopping) {
      break;
    }
  }
  mTsfn.Release();
}
