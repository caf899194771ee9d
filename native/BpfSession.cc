#include "BpfSession.hh"

#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <vector>


static std::atomic<bool> gVerbose{false};

static int printLibbpf(enum libbpf_print_level level, const char *fmt, va_list args) {
  // Warnings are muted too unless verbose: the failure that matters reaches JS as an
  // exception, and libbpf's chatter would interleave with the CLI's JSON output.
  (void)level;
  if (!gVerbose.load()) {
    return 0;
  }
  return vfprintf(stderr, fmt, args);
}

void setLibbpfVerbose(bool verbose) {
  gVerbose.store(verbose);
  libbpf_set_print(printLibbpf);
}

static std::runtime_error failure(const std::string &what, int err) {
  std::string msg = "failed to " + what + ": " + strerror(err < 0 ? -err : err);
  if (err == -EPERM || err == EPERM || err == -EACCES || err == EACCES) {
    msg += " (loading BPF needs CAP_BPF and CAP_PERFMON, or root)";
  }
  return std::runtime_error(msg);
}

BpfSession::BpfSession(const std::string &objectPath, const SessionConfig &config) {
  try {
    mObj = bpf_object__open_file(objectPath.c_str(), nullptr);
    if (!mObj) {
      int err = errno;
      throw failure("open BPF object " + objectPath, err);
    }

    bpf_map *events = bpf_object__find_map_by_name(mObj, "events");
    mLosses = bpf_object__find_map_by_name(mObj, "losses");
    mListeners = bpf_object__find_map_by_name(mObj, "listeners");
    if (!events || !mLosses || !mListeners) {
      throw std::runtime_error("failed to find maps in " + objectPath + ": wrong object?");
    }
    if (bpf_map__key_size(mListeners) != sizeof(tcpaudit_listener_key) ||
        bpf_map__value_size(mListeners) != sizeof(tcpaudit_sock_info)) {
      throw std::runtime_error("listeners map of " + objectPath + " does not match this addon: "
                               "run scripts/setup-capture.sh");
    }
    int err = bpf_map__set_max_entries(events, static_cast<uint32_t>(config.ringBytes));
    if (err) {
      throw failure("size ring buffer", err);
    }
    setRodata(config);

    err = bpf_object__load(mObj);
    if (err) {
      throw failure("load BPF object", err);
    }

    bpf_program *prog = bpf_object__find_program_by_name(mObj, "handle_set_state");
    if (!prog) {
      throw std::runtime_error("failed to find program handle_set_state in " + objectPath);
    }
    mLink = bpf_program__attach(prog);
    if (!mLink) {
      err = errno;
      mLink = nullptr;
      throw failure("attach tp_btf/inet_sock_set_state", err);
    }
    mEventsFd = bpf_map__fd(events);
    mProgFd = bpf_program__fd(prog);
  } catch (...) {
    destroy();
    throw;
  }
}

BpfSession::~BpfSession() { destroy(); }

void BpfSession::destroy() {
  if (mLink) {
    bpf_link__destroy(mLink);
    mLink = nullptr;
  }
  if (mObj) {
    bpf_object__close(mObj);
    mObj = nullptr;
  }
  mLosses = nullptr;
  mListeners = nullptr;
  mEventsFd = -1;
  mProgFd = -1;
}

ProgramStats BpfSession::programStats() const {
  ProgramStats out;
  bpf_prog_info info{};
  uint32_t len = sizeof(info);
  if (mProgFd >= 0 && bpf_obj_get_info_by_fd(mProgFd, &info, &len) == 0) {
    out.runTimeNs = info.run_time_ns;
    out.runCount = info.run_cnt;
  }
  return out;
}

// Writes the `const volatile` knobs into .rodata before load. Without a skeleton we find
// each variable's offset through the object's BTF datasec; every knob must be found, with the
// size this build expects, or the object is not the one this addon was built with.
void BpfSession::setRodata(const SessionConfig &config) {
  bpf_map *rodata = nullptr;
  bpf_map *map;
  bpf_object__for_each_map(map, mObj) {
    const char *name = bpf_map__name(map);
    size_t len = strlen(name);
    if (bpf_map__is_internal(map) && len >= 7 && strcmp(name + len - 7, ".rodata") == 0) {
      rodata = map;
    }
  }
  btf *objBtf = bpf_object__btf(mObj);
  if (!rodata || !objBtf) {
    throw std::runtime_error("failed to find .rodata in BPF object");
  }
  // libbpf 1.1 hands out the initial value read-only: edit a copy and set it back.
  size_t size = 0;
  auto *initial = static_cast<const uint8_t *>(bpf_map__initial_value(rodata, &size));
  int secId = btf__find_by_name_kind(objBtf, ".rodata", BTF_KIND_DATASEC);
  if (!initial || secId < 0) {
    throw std::runtime_error("failed to find .rodata in BPF object");
  }
  std::vector<uint8_t> data(initial, initial + size);

  // Arrays are zero-filled past the configured entries; counts say how many are meaningful.
  uint16_t ports[TCPAUDIT_MAX_PORTS] = {};
  tcpaudit_cidr cidrs[TCPAUDIT_MAX_CIDRS] = {};
  uint32_t portCount = static_cast<uint32_t>(config.filterPorts.size());
  uint32_t cidrCount = static_cast<uint32_t>(config.filterCidrs.size());
  if (portCount > TCPAUDIT_MAX_PORTS || cidrCount > TCPAUDIT_MAX_CIDRS) {
    throw std::runtime_error("too many port or address filters");
  }
  std::copy(config.filterPorts.begin(), config.filterPorts.end(), ports);
  std::copy(config.filterCidrs.begin(), config.filterCidrs.end(), cidrs);
  struct Knob {
    const char *name;
    const void *value;
    size_t size;
  };
  const Knob knobs[] = {
      {"ring_bytes", &config.ringBytes, sizeof(config.ringBytes)},
      {"run_id", &config.runId, sizeof(config.runId)},
      {"filter_netns", &config.filterNetns, sizeof(config.filterNetns)},
      {"filter_port_count", &portCount, sizeof(portCount)},
      {"filter_ports", ports, sizeof(ports)},
      {"filter_cidr_count", &cidrCount, sizeof(cidrCount)},
      {"filter_cidrs", cidrs, sizeof(cidrs)},
  };

  const btf_type *sec = btf__type_by_id(objBtf, secId);
  const btf_var_secinfo *vars = btf_var_secinfos(sec);
  size_t found = 0;
  for (unsigned i = 0; i < btf_vlen(sec); i++) {
    const btf_type *var = btf__type_by_id(objBtf, vars[i].type);
    const char *name = btf__name_by_offset(objBtf, var->name_off);
    for (const Knob &knob : knobs) {
      if (strcmp(name, knob.name) != 0 || vars[i].size != knob.size ||
          vars[i].offset + knob.size > size) {
        continue;
      }
      memcpy(data.data() + vars[i].offset, knob.value, knob.size);
      found++;
    }
  }
  if (found != sizeof(knobs) / sizeof(knobs[0])) {
    throw std::runtime_error("failed to set the load-time settings of the BPF object: "
                             "wrong object? (run scripts/setup-capture.sh)");
  }
  int err = bpf_map__set_initial_value(rodata, data.data(), data.size());
  if (err) {
    throw failure("set .rodata", err);
  }
}

SeedResult BpfSession::seedListeners(const std::vector<ListenerSeed> &seeds) {
  SeedResult out;
  if (!mListeners) {
    out.failed = static_cast<uint32_t>(seeds.size());
    out.firstError = ESRCH;
    return out;
  }
  for (const ListenerSeed &seed : seeds) {
    tcpaudit_listener_key key{};
    key.netns = seed.netns;
    key.port = seed.port;
    tcpaudit_sock_info value{};
    value.pid = seed.pid;
    value.tid = seed.pid;
    value.uid = seed.uid;
    value.netns = seed.netns;
    value.cgroup_id = seed.cgroupId;
    value.proc_source = TCPAUDIT_PROC_SEEDED;
    value.born = 1;
    memcpy(value.comm, seed.comm, sizeof(value.comm));
    int err = bpf_map__update_elem(mListeners, &key, sizeof(key), &value, sizeof(value),
                                   BPF_NOEXIST);
    if (err == 0) {
      out.inserted++;
    } else if (err == -EEXIST) {
      out.existed++;
    } else {
      out.failed++;
      if (!out.firstError) {
        out.firstError = -err;
      }
    }
  }
  return out;
}

KernelLosses BpfSession::losses() const {
  KernelLosses out;
  if (!mLosses) {
    return out;
  }
  int ncpus = libbpf_num_possible_cpus();
  if (ncpus <= 0) {
    return out;
  }
  std::vector<uint64_t> values(ncpus);
  uint64_t *slots[] = {&out.ring, &out.sockMap, &out.listenerMap};
  for (uint32_t key = 0; key < TCPAUDIT_LOSS_MAX; key++) {
    if (bpf_map__lookup_elem(mLosses, &key, sizeof(key), values.data(),
                             values.size() * sizeof(uint64_t), 0)) {
      continue;
    }
    for (uint64_t v : values) {
      *slots[key] += v;
    }
  }
  return out;
}
