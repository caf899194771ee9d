#ifndef TCPAUDIT_CAPTURE_HH
#define TCPAUDIT_CAPTURE_HH

#include <napi.h>

#include <memory>

#include "BpfSession.hh"
#include "Drain.hh"

// JS-facing capture: new Capture(objectPath, {ringBytes, libbpfVerbose, filterNetns,
// filterPorts, filterCidrs}, onBatch, onClosed?).
// onBatch(buffer, count, clockOffsetNs) runs on the JS thread once per batch; onClosed()
// once after close(), when every queued batch has been delivered.
// Every method runs on the JS thread; only Drain owns another thread.
class Capture : public Napi::ObjectWrap<Capture> {
public:
  static Napi::Function define(Napi::Env env);

  explicit Capture(const Napi::CallbackInfo &info);
  ~Capture() override;

private:
  Napi::Value stats(const Napi::CallbackInfo &info);
  Napi::Value clockOffset(const Napi::CallbackInfo &info);
  Napi::Value runId(const Napi::CallbackInfo &info);
  Napi::Value close(const Napi::CallbackInfo &info);
  // pause(true) stops draining the ring (the kernel side then fills it and counts losses);
  // for tests and diagnostics only. pause(false) resumes.
  Napi::Value pause(const Napi::CallbackInfo &info);
  // seedListeners([{netns, port, pid, uid, cgroupId: bigint, comm}]) -> {inserted, existed,
  // failed, firstError}: listeners that predate the capture (see producer/capture/listeners.ts,
  // which validates them first). Throws TypeError on a malformed entry, writing none.
  Napi::Value seedListeners(const Napi::CallbackInfo &info);

  // Idempotent: joins the drain thread first (it uses the ring), then frees the BPF side.
  void shutdown();
  static void onEnvCleanup(void *self);

  DrainStats mStats;
  std::unique_ptr<BpfSession> mSession;
  std::unique_ptr<Drain> mDrain;
  KernelLosses mFinalLosses;  // read just before the maps go away, so stats() stays valid
  uint64_t mRunId = 0;
  napi_env mEnv = nullptr;
};

#endif
