#ifndef TCPAUDIT_BPF_SESSION_HH
#define TCPAUDIT_BPF_SESSION_HH

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

extern "C" {
#include "tcpaudit.h"
}

struct bpf_object;
struct bpf_link;
struct bpf_map;

// What the kernel side lost, summed over CPUs (see enum tcpaudit_loss in bpf/tcpaudit.h).
struct KernelLosses {
  uint64_t ring = 0;
  uint64_t sockMap = 0;
  uint64_t listenerMap = 0;
};

// Load-time settings written into the program's .rodata before load.
struct SessionConfig {
  uint64_t ringBytes = 0;
  uint64_t runId = 0;
  uint32_t filterNetns = 0;              // 0: every namespace
  std::vector<uint16_t> filterPorts;     // at most TCPAUDIT_MAX_PORTS; empty: every port
  std::vector<tcpaudit_cidr> filterCidrs;  // at most TCPAUDIT_MAX_CIDRS; empty: every address
};

// A listener that predates the capture, as the loader found it in /proc.
struct ListenerSeed {
  uint32_t netns = 0;  // namespace inode
  uint16_t port = 0;   // host order
  uint32_t pid = 0;    // tgid; also written as tid (which thread called listen() is unknown)
  uint32_t uid = 0;
  uint64_t cgroupId = 0;
  char comm[TCPAUDIT_COMM_LEN] = {};
};

// What seedListeners() did with each entry.
struct SeedResult {
  uint32_t inserted = 0;
  uint32_t existed = 0;  // the program recorded a listen() on that key first: its entry wins
  uint32_t failed = 0;   // map full or another error; firstError holds the first errno
  int firstError = 0;
};

// The kernel's run statistics of our program (non-zero only with kernel.bpf_stats_enabled=1).
struct ProgramStats {
  uint64_t runTimeNs = 0;
  uint64_t runCount = 0;
};

// Owns the BPF object and its attachment.
// Threads: everything runs on the JS thread; the ring buffer fd is read by the drain thread,
// which must be joined before the destructor runs.
class BpfSession {
public:
  // Opens, configures, loads and attaches; throws std::runtime_error with a clear message.
  BpfSession(const std::string &objectPath, const SessionConfig &config);
  ~BpfSession();
  BpfSession(const BpfSession &) = delete;
  BpfSession &operator=(const BpfSession &) = delete;

  int eventsFd() const { return mEventsFd; }
  KernelLosses losses() const;
  ProgramStats programStats() const;
  // Writes each seed into the listeners map with BPF_NOEXIST, so an entry the program made
  // since attaching (a newer listen() on the same port) is never overwritten.
  SeedResult seedListeners(const std::vector<ListenerSeed> &seeds);

private:
  void setRodata(const SessionConfig &config);
  void destroy();

  bpf_object *mObj = nullptr;
  bpf_link *mLink = nullptr;
  bpf_map *mLosses = nullptr;
  bpf_map *mListeners = nullptr;
  int mProgFd = -1;
  int mEventsFd = -1;
};

// Routes libbpf's messages to stderr only when verbose; process-wide, as libbpf's is.
void setLibbpfVerbose(bool verbose);

#endif
