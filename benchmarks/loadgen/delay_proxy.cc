// delay_proxy: a TCP proxy that holds every chunk it reads for --delay-us before writing it
// on, in both directions: Postgres "on another host" where the kernel has no netem (the
// benchmarks' remote rows; benchmarks/remote_postgres.py). One thread: epoll, and one
// timerfd armed (absolute, CLOCK_MONOTONIC, timer slack 1 ns) for the earliest chunk due,
// so a chunk goes on at its due time to within the scheduler's wake-up latency, never early
// (a sleep-based proxy rounds sub-millisecond waits up). Chunks of one direction keep their
// order; a write that would block waits for the socket, and later chunks wait behind it.
// TCP_NODELAY on both sides: Postgres's small messages must not wait for Nagle.
//
//   delay_proxy --listen 127.0.0.1:55433 --upstream 127.0.0.1:55432 [--delay-us 1000]
//               [--realtime 1]
//
// --realtime 1 asks for SCHED_FIFO (root only; said on stderr whether it got it): on cores
// saturated by the processes measured, a normal thread wakes hundreds of microseconds late
// and the delay grows with the load, where a network's (or netem's, in softirq) does not.
// The proxy's CPU is counted either way.
//
// Ready once it prints "delay_proxy listening on"; on SIGTERM or SIGINT it prints what it
// forwarded and how late each chunk went on after its due time (mean, max), and exits.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <queue>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

constexpr uint64_t kListenId = 0;
constexpr uint64_t kTimerId = 1;
constexpr size_t kReadMax = 64 * 1024;

volatile sig_atomic_t g_stop = 0;

void on_signal(int) { g_stop = 1; }

int64_t now_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

bool parse_addr(const std::string& text, sockaddr_in* addr) {
  const auto colon = text.rfind(':');
  if (colon == std::string::npos) return false;
  std::memset(addr, 0, sizeof *addr);
  addr->sin_family = AF_INET;
  addr->sin_port = htons(static_cast<uint16_t>(std::atoi(text.c_str() + colon + 1)));
  return inet_pton(AF_INET, text.substr(0, colon).c_str(), &addr->sin_addr) == 1;
}

void no_delay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

struct Chunk {
  int64_t due_ns;
  std::string data;
  size_t sent = 0;
};

// One direction of a connection: what was read from ``from``, waiting to go to ``to``.
struct Pipe {
  int from = -1, to = -1;
  std::deque<Chunk> queue;
  bool eof = false;       // ``from`` said it sends no more
  bool shut = false;      // and ``to`` was told so, once the queue emptied
  bool blocked = false;   // ``to`` would block: waiting for EPOLLOUT
};

struct Conn {
  uint64_t id;
  Pipe dir[2];  // 0: client to upstream, 1: upstream to client
};

struct Due {
  int64_t due_ns;
  uint64_t conn;
  int dir;
  bool operator>(const Due& o) const { return due_ns > o.due_ns; }
};

class Proxy {
 public:
  Proxy(sockaddr_in upstream, int64_t delay_ns) : upstream_(upstream), delay_ns_(delay_ns) {}

  bool listen_on(const sockaddr_in& addr) {
    listen_fd_ = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(listen_fd_, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0 ||
        listen(listen_fd_, 256) != 0) {
      std::perror("delay_proxy: listen");
      return false;
    }
    epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
    timer_fd_ = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    watch(listen_fd_, kListenId << 1, EPOLLIN, EPOLL_CTL_ADD);
    watch(timer_fd_, kTimerId << 1, EPOLLIN, EPOLL_CTL_ADD);
    return true;
  }

  void run() {
    std::vector<epoll_event> events(256);
    while (!g_stop) {
      const int n = epoll_wait(epoll_fd_, events.data(), static_cast<int>(events.size()), -1);
      if (n < 0) {
        if (errno == EINTR) continue;
        std::perror("delay_proxy: epoll_wait");
        return;
      }
      for (int i = 0; i < n; ++i) {
        const uint64_t conn = events[i].data.u64 >> 1;
        const int side = static_cast<int>(events[i].data.u64 & 1);
        if (conn == kListenId) {
          accept_all();
        } else if (conn == kTimerId) {
          uint64_t expirations;
          while (read(timer_fd_, &expirations, sizeof expirations) > 0) {
          }
          fire();
        } else {
          on_socket(conn, side, events[i].events);
        }
      }
    }
  }

  void report() const {
    std::fprintf(stderr,
                 "delay_proxy: %llu connections, %llu chunks, %llu bytes forwarded; chunks "
                 "went on %.1f us after their due time on average, %.1f us at most\n",
                 static_cast<unsigned long long>(accepted_),
                 static_cast<unsigned long long>(chunks_),
                 static_cast<unsigned long long>(bytes_),
                 chunks_ ? static_cast<double>(late_sum_ns_) / 1e3 / static_cast<double>(chunks_)
                         : 0.0,
                 static_cast<double>(late_max_ns_) / 1e3);
  }

 private:
  void watch(int fd, uint64_t tag, uint32_t events, int op) {
    epoll_event ev{};
    ev.events = events;
    ev.data.u64 = tag;
    epoll_ctl(epoll_fd_, op, fd, &ev);
  }

  // A side's fd: readable while its direction has not seen EOF, writable while the other
  // direction waits to write to it.
  void rewatch(Conn& c, int side) {
    const Pipe& reading = c.dir[side];
    const Pipe& writing = c.dir[1 - side];
    uint32_t events = 0;
    if (!reading.eof) events |= EPOLLIN;
    if (writing.blocked) events |= EPOLLOUT;
    watch(reading.from, (c.id << 1) | static_cast<uint64_t>(side), events, EPOLL_CTL_MOD);
  }

  void accept_all() {
    for (;;) {
      const int client = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (client < 0) return;
      // A blocking connect: the upstream is on this host (a loopback or a veth address).
      const int up = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (connect(up, reinterpret_cast<const sockaddr*>(&upstream_), sizeof upstream_) != 0) {
        std::perror("delay_proxy: connect upstream");
        close(up);
        close(client);
        continue;
      }
      fcntl(up, F_SETFL, fcntl(up, F_GETFL) | O_NONBLOCK);
      no_delay(client);
      no_delay(up);
      auto conn = std::make_unique<Conn>();
      conn->id = next_id_++;
      conn->dir[0].from = client;
      conn->dir[0].to = up;
      conn->dir[1].from = up;
      conn->dir[1].to = client;
      watch(client, conn->id << 1, EPOLLIN, EPOLL_CTL_ADD);
      watch(up, (conn->id << 1) | 1, EPOLLIN, EPOLL_CTL_ADD);
      conns_[conn->id] = std::move(conn);
      ++accepted_;
    }
  }

  void on_socket(uint64_t id, int side, uint32_t events) {
    auto it = conns_.find(id);
    if (it == conns_.end()) return;
    Conn& c = *it->second;
    if (events & EPOLLOUT) {
      Pipe& writing = c.dir[1 - side];
      writing.blocked = false;
      if (!flush(c, 1 - side)) return;
      rewatch(c, side);
    }
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
      Pipe& p = c.dir[side];
      char buf[kReadMax];
      for (;;) {
        const ssize_t got = read(p.from, buf, sizeof buf);
        if (got > 0) {
          const int64_t due = now_ns() + delay_ns_;
          p.queue.push_back(Chunk{due, std::string(buf, static_cast<size_t>(got))});
          dues_.push(Due{due, id, side});
          continue;
        }
        if (got == 0) {
          p.eof = true;
          break;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) break;
        if (errno == EINTR) continue;
        drop(id);
        return;
      }
      arm();
      if (!flush(c, side)) return;  // an EOF with nothing queued goes on at once
      rewatch(c, side);
    }
  }

  // Sends what is due on direction ``d``; false when the connection was dropped.
  bool flush(Conn& c, int d) {
    Pipe& p = c.dir[d];
    const int64_t now = now_ns();
    while (!p.queue.empty() && p.queue.front().due_ns <= now && !p.blocked) {
      Chunk& chunk = p.queue.front();
      const ssize_t put = write(p.to, chunk.data.data() + chunk.sent, chunk.data.size() - chunk.sent);
      if (put < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
          p.blocked = true;
          break;
        }
        if (errno == EINTR) continue;
        drop(c.id);
        return false;
      }
      if (chunk.sent == 0) {
        const int64_t late = now - chunk.due_ns;
        late_sum_ns_ += late;
        if (late > late_max_ns_) late_max_ns_ = late;
        ++chunks_;
      }
      chunk.sent += static_cast<size_t>(put);
      bytes_ += static_cast<uint64_t>(put);
      if (chunk.sent == chunk.data.size()) p.queue.pop_front();
    }
    if (p.blocked) rewatch(c, 1 - d);
    if (p.queue.empty() && p.eof && !p.shut) {
      shutdown(p.to, SHUT_WR);
      p.shut = true;
    }
    if (c.dir[0].shut && c.dir[1].shut) {
      drop(c.id);
      return false;
    }
    return true;
  }

  void fire() {
    const int64_t now = now_ns();
    while (!dues_.empty() && dues_.top().due_ns <= now) {
      const Due due = dues_.top();
      dues_.pop();
      auto it = conns_.find(due.conn);
      if (it != conns_.end()) flush(*it->second, due.dir);
    }
    arm();
  }

  void arm() {
    if (dues_.empty()) return;
    const int64_t at = dues_.top().due_ns;
    itimerspec spec{};
    spec.it_value.tv_sec = at / 1'000'000'000;
    spec.it_value.tv_nsec = at % 1'000'000'000;
    timerfd_settime(timer_fd_, TFD_TIMER_ABSTIME, &spec, nullptr);
  }

  void drop(uint64_t id) {
    auto it = conns_.find(id);
    if (it == conns_.end()) return;
    close(it->second->dir[0].from);
    close(it->second->dir[1].from);
    conns_.erase(it);
  }

  const sockaddr_in upstream_;
  const int64_t delay_ns_;
  int listen_fd_ = -1, epoll_fd_ = -1, timer_fd_ = -1;
  uint64_t next_id_ = 2;  // 0 and 1 tag the listening socket and the timer
  std::unordered_map<uint64_t, std::unique_ptr<Conn>> conns_;
  std::priority_queue<Due, std::vector<Due>, std::greater<Due>> dues_;
  uint64_t accepted_ = 0, chunks_ = 0, bytes_ = 0;
  int64_t late_sum_ns_ = 0, late_max_ns_ = 0;
};

}  // namespace

int main(int argc, char** argv) {
  std::string listen_at, upstream_at;
  int64_t delay_us = 1000;
  bool realtime = false;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i], v = argv[i + 1];
    if (a == "--listen") listen_at = v;
    else if (a == "--upstream") upstream_at = v;
    else if (a == "--delay-us") delay_us = std::atoll(v.c_str());
    else if (a == "--realtime") realtime = v == "1";
    else {
      std::fprintf(stderr, "unknown option %s\n", a.c_str());
      return 2;
    }
  }
  sockaddr_in listen_addr{}, upstream{};
  if (!parse_addr(listen_at, &listen_addr) || !parse_addr(upstream_at, &upstream) ||
      delay_us < 0) {
    std::fprintf(stderr,
                 "usage: delay_proxy --listen HOST:PORT --upstream HOST:PORT [--delay-us N]\n");
    return 2;
  }
  prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
  const char* scheduling = "normal scheduling";
  if (realtime) {
    sched_param param{};
    param.sched_priority = 10;
    scheduling = sched_setscheduler(0, SCHED_FIFO, &param) == 0
                     ? "SCHED_FIFO"
                     : "normal scheduling (SCHED_FIFO refused)";
  }
  signal(SIGPIPE, SIG_IGN);
  struct sigaction sa {};
  sa.sa_handler = on_signal;  // no SA_RESTART: epoll_wait returns, the loop sees g_stop
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  Proxy proxy(upstream, delay_us * 1000);
  if (!proxy.listen_on(listen_addr)) return 1;
  std::fprintf(stderr, "delay_proxy listening on %s, forwarding to %s %lld us later (%s)\n",
               listen_at.c_str(), upstream_at.c_str(), static_cast<long long>(delay_us),
               scheduling);
  proxy.run();
  proxy.report();
  return 0;
}
