#include "Capture.hh"

#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

// Batches waiting for JS; past this the drain drops and counts instead of queueing more.
static constexpr size_t kMaxQueuedBatches = 64;
static constexpr uint64_t kDefaultRingBytes = 64u << 20;  // as DEFAULT_RING_BYTES in TS

Napi::Function Capture::define(Napi::Env env) {
  return DefineClass(env, "Capture",
                     {
                         InstanceMethod<&Capture::stats>("stats"),
                         InstanceMethod<&Capture::clockOffset>("clockOffsetNs"),
                         InstanceMethod<&Capture::runId>("runId"),
                         InstanceMethod<&Capture::close>("close"),
                         InstanceMethod<&Capture::pause>("pause"),
                         InstanceMethod<&Capture::seedListeners>("seedListeners"),
                     });
}

static bool validRingBytes(uint64_t bytes) {
  uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  bool powerOfTwo = bytes != 0 && (bytes & (bytes - 1)) == 0;
  return powerOfTwo && bytes % page == 0 && bytes <= (1ull << 30);
}

// filterNetns: number; filterPorts: number[]; filterCidrs: {family, addr: Buffer(16), prefix}[].
// The TypeScript loader parses and validates; these checks only keep bad input out of BPF.
static void readFilters(Napi::Env env, Napi::Object options, SessionConfig &config) {
  Napi::Value netns = options.Get("filterNetns");
  if (netns.IsNumber()) {
    config.filterNetns = netns.As<Napi::Number>().Uint32Value();
  }
  Napi::Value ports = options.Get("filterPorts");
  if (ports.IsArray()) {
    Napi::Array list = ports.As<Napi::Array>();
    if (list.Length() > TCPAUDIT_MAX_PORTS) {
      throw Napi::RangeError::New(env, "too many filterPorts");
    }
    for (uint32_t i = 0; i < list.Length(); i++) {
      config.filterPorts.push_back(
          static_cast<uint16_t>(list.Get(i).As<Napi::Number>().Uint32Value()));
    }
  }
  Napi::Value cidrs = options.Get("filterCidrs");
  if (cidrs.IsArray()) {
    Napi::Array list = cidrs.As<Napi::Array>();
    if (list.Length() > TCPAUDIT_MAX_CIDRS) {
      throw Napi::RangeError::New(env, "too many filterCidrs");
    }
    for (uint32_t i = 0; i < list.Length(); i++) {
      Napi::Object item = list.Get(i).As<Napi::Object>();
      Napi::Value addr = item.Get("addr");
      if (!addr.IsBuffer() || addr.As<Napi::Buffer<uint8_t>>().Length() != 16) {
        throw Napi::TypeError::New(env, "filterCidrs[].addr must be a 16-byte Buffer");
      }
      tcpaudit_cidr cidr{};
      memcpy(cidr.addr, addr.As<Napi::Buffer<uint8_t>>().Data(), 16);
      cidr.family = static_cast<uint16_t>(item.Get("family").As<Napi::Number>().Uint32Value());
      cidr.prefix = static_cast<uint16_t>(item.Get("prefix").As<Napi::Number>().Uint32Value());
      config.filterCidrs.push_back(cidr);
    }
  }
}

Capture::Capture(const Napi::CallbackInfo &info) : Napi::ObjectWrap<Capture>(info) {
  Napi::Env env = info.Env();
  mEnv = env;
  // The TypeScript loader validates first; these checks keep a direct caller from crashing.
  if (info.Length() < 3 || !info[0].IsString() || !info[1].IsObject() || !info[2].IsFunction()) {
    throw Napi::TypeError::New(env, "Capture(objectPath, options, onBatch) expected");
  }
  std::string path = info[0].As<Napi::String>();
  Napi::Object options = info[1].As<Napi::Object>();
  Napi::Function onBatch = info[2].As<Napi::Function>();

  uint64_t ringBytes = kDefaultRingBytes;
  Napi::Value ring = options.Get("ringBytes");
  if (!ring.IsUndefined()) {
    if (!ring.IsNumber()) {
      throw Napi::TypeError::New(env, "ringBytes must be a number");
    }
    ringBytes = static_cast<uint64_t>(ring.As<Napi::Number>().Int64Value());
  }
  if (!validRingBytes(ringBytes)) {
    throw Napi::RangeError::New(
        env, "ringBytes must be a power of two, a multiple of the page size and <= 1 GiB");
  }
  setLibbpfVerbose(options.Get("libbpfVerbose").ToBoolean().Value());

  SessionConfig config;
  config.ringBytes = ringBytes;
  readFilters(env, options, config);

  // Per-load run id: boot-clock ns at load never repeats within a boot, so connection ids
  // stay unique when the program is reloaded and its counter restarts at 0.
  timespec ts{};
  clock_gettime(CLOCK_BOOTTIME, &ts);
  mRunId = static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + ts.tv_nsec;
  config.runId = mRunId;

  try {
    mSession = std::make_unique<BpfSession>(path, config);
  } catch (const std::runtime_error &e) {
    throw Napi::Error::New(env, e.what());
  }

  // Optional onClosed(): called once the last queued batch has been delivered, so JS knows
  // when stop() is complete. The reference lives until the TSFN's finalizer runs.
  auto *onClosed = new Napi::FunctionReference();
  if (info.Length() > 3 && info[3].IsFunction()) {
    *onClosed = Napi::Persistent(info[3].As<Napi::Function>());
  }
  // JS thread, after the drain thread released the TSFN and the queue is empty.
  auto finalize = [](Napi::Env, Napi::FunctionReference *ref) {
    if (!ref->IsEmpty()) {
      ref->Call({});  // an exception here surfaces as uncaught, like any JS callback's
    }
    delete ref;
  };
  auto tsfn = Napi::ThreadSafeFunction::New(env, onBatch, "tcpaudit-capture",
                                            kMaxQueuedBatches, 1, onClosed, finalize);
  try {
    mDrain = std::make_unique<Drain>(mSession->eventsFd(), tsfn, mStats);
  } catch (const std::runtime_error &e) {
    tsfn.Release();
    mSession.reset();
    throw Napi::Error::New(env, e.what());
  }
  napi_add_env_cleanup_hook(env, &Capture::onEnvCleanup, this);
}

Capture::~Capture() { shutdown(); }

void Capture::onEnvCleanup(void *self) { static_cast<Capture *>(self)->shutdown(); }

void Capture::shutdown() {
  if (!mDrain && !mSession) {
    return;
  }
  mDrain.reset();
  if (mSession) {
    mFinalLosses = mSession->losses();
  }
  mSession.reset();
  napi_remove_env_cleanup_hook(mEnv, &Capture::onEnvCleanup, this);
}

Napi::Value Capture::stats(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  KernelLosses losses = mSession ? mSession->losses() : mFinalLosses;
  Napi::Object out = Napi::Object::New(env);
  auto num = [&](uint64_t v) { return Napi::Number::New(env, static_cast<double>(v)); };
  out.Set("kernelLost", num(losses.ring));
  out.Set("sockMapErrors", num(losses.sockMap));
  out.Set("listenerMapErrors", num(losses.listenerMap));
  out.Set("userDropped", num(mStats.userDropped.load()));
  out.Set("droppedBatches", num(mStats.droppedBatches.load()));
  out.Set("batches", num(mStats.batches.load()));
  out.Set("events", num(mStats.events.load()));
  ProgramStats prog = mSession ? mSession->programStats() : ProgramStats{};
  out.Set("progRunTimeNs", num(prog.runTimeNs));
  out.Set("progRunCount", num(prog.runCount));
  return out;
}

Napi::Value Capture::clockOffset(const Napi::CallbackInfo &info) {
  return Napi::BigInt::New(info.Env(), clockOffsetNs());
}

Napi::Value Capture::runId(const Napi::CallbackInfo &info) {
  return Napi::BigInt::New(info.Env(), mRunId);
}

Napi::Value Capture::pause(const Napi::CallbackInfo &info) {
  if (mDrain) {
    mDrain->setPaused(info.Length() > 0 && info[0].ToBoolean().Value());
  }
  return info.Env().Undefined();
}

// Every entry is read and checked before any is written, so a bad one writes nothing.
static ListenerSeed readSeed(Napi::Env env, Napi::Value item) {
  auto bad = [&](const char *what) {
    return Napi::TypeError::New(env, std::string("seedListeners: ") + what);
  };
  if (!item.IsObject()) {
    throw bad("entries must be objects");
  }
  Napi::Object o = item.As<Napi::Object>();
  auto u32 = [&](const char *name, double max) -> uint32_t {
    Napi::Value v = o.Get(name);
    if (!v.IsNumber()) {
      throw bad((std::string(name) + " must be a number").c_str());
    }
    double d = v.As<Napi::Number>().DoubleValue();
    if (!(d >= 0 && d <= max) || d != static_cast<double>(static_cast<uint64_t>(d))) {
      throw bad((std::string(name) + " out of range").c_str());
    }
    return static_cast<uint32_t>(d);
  };
  ListenerSeed seed;
  seed.netns = u32("netns", 4294967295.0);
  seed.port = static_cast<uint16_t>(u32("port", 65535));
  seed.pid = u32("pid", 4294967295.0);
  seed.uid = u32("uid", 4294967295.0);
  Napi::Value cgroup = o.Get("cgroupId");
  if (!cgroup.IsBigInt()) {
    throw bad("cgroupId must be a bigint");
  }
  bool lossless = false;
  seed.cgroupId = cgroup.As<Napi::BigInt>().Uint64Value(&lossless);
  if (!lossless) {
    throw bad("cgroupId out of range");
  }
  Napi::Value comm = o.Get("comm");
  if (!comm.IsString()) {
    throw bad("comm must be a string");
  }
  // truncated like the kernel's task comm: at most 15 bytes and a NUL
  std::string text = comm.As<Napi::String>().Utf8Value();
  memcpy(seed.comm, text.data(), std::min(text.size(), sizeof(seed.comm) - 1));
  return seed;
}

Napi::Value Capture::seedListeners(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsArray()) {
    throw Napi::TypeError::New(env, "seedListeners(entries) expected an array");
  }
  Napi::Array list = info[0].As<Napi::Array>();
  if (list.Length() > TCPAUDIT_MAX_LISTENERS) {
    throw Napi::RangeError::New(env, "seedListeners: more entries than the listeners map holds");
  }
  std::vector<ListenerSeed> seeds;
  seeds.reserve(list.Length());
  for (uint32_t i = 0; i < list.Length(); i++) {
    seeds.push_back(readSeed(env, list.Get(i)));
  }
  if (!mSession) {
    throw Napi::Error::New(env, "seedListeners: the capture is closed");
  }
  SeedResult result = mSession->seedListeners(seeds);
  Napi::Object out = Napi::Object::New(env);
  out.Set("inserted", Napi::Number::New(env, result.inserted));
  out.Set("existed", Napi::Number::New(env, result.existed));
  out.Set("failed", Napi::Number::New(env, result.failed));
  const char *why = result.firstError ? strerror(result.firstError) : "";
  out.Set("firstError", Napi::String::New(env, why));
  return out;
}

Napi::Value Capture::close(const Napi::CallbackInfo &info) {
  shutdown();
  return info.Env().Undefined();
}
