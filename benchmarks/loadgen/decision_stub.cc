// A reference off-ledger client for the benchmarks: a DecisionService (callback API) that
// approves every Decide after a fixed delay, or never answers it.
//
//   decision_stub --listen 127.0.0.1:PORT [--delay-us 5000]   approve after 5 ms
//   decision_stub --listen 127.0.0.1:PORT --never-answer        hold every Decide until the
//                                                              caller gives up (its deadline)
//
// The delay is counted from the moment the call reaches the handler. One timer thread
// finishes the calls when due (a condition variable waiting on CLOCK_MONOTONIC: about
// 0.1 ms late at worst, never early), so neither gRPC's millisecond timers nor an event loop
// add to it. Notify answers at once. grpc.health.v1 answers SERVING. On SIGTERM or SIGINT it
// prints, on stderr, how many calls it answered and the delays really waited.
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <iostream>
#include <memory>
#include <mutex>
#include <queue>
#include <string>
#include <thread>
#include <vector>

#include "authswitch/v1/decision.grpc.pb.h"
#include "histogram.h"

namespace pb = authswitch::v1;
using Clock = std::chrono::steady_clock;

namespace {

struct Due {
  Clock::time_point at;
  Clock::time_point arrived;
  grpc::ServerUnaryReactor* reactor;
  bool operator>(const Due& other) const { return at > other.at; }
};

// Finishes reactors at their due time, from one thread.
class Timer {
 public:
  Timer() : thread_([this] { Run(); }) {}
  ~Timer() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_one();
    thread_.join();
  }

  void Add(Due due) {
    bool earliest;
    {
      std::lock_guard<std::mutex> lock(mu_);
      earliest = queue_.empty() || due.at < queue_.top().at;
      queue_.push(due);
    }
    if (earliest) cv_.notify_one();
  }

  const loadgen::Histogram& waited() const { return waited_; }

 private:
  void Run() {
    std::unique_lock<std::mutex> lock(mu_);
    std::vector<Due> ready;
    while (true) {
      if (queue_.empty()) {
        // Calls still waiting at a stop are finished by the server's shutdown.
        if (stopping_) return;
        cv_.wait(lock);
        continue;
      }
      Clock::time_point now = Clock::now();
      if (queue_.top().at > now) {
        if (stopping_) return;
        cv_.wait_until(lock, queue_.top().at);
        continue;
      }
      while (!queue_.empty() && queue_.top().at <= now) {
        ready.push_back(queue_.top());
        queue_.pop();
      }
      lock.unlock();
      for (const Due& due : ready) {
        auto waited = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() -
                                                                            due.arrived);
        waited_.record(static_cast<uint64_t>(waited.count()));
        due.reactor->Finish(grpc::Status::OK);
      }
      ready.clear();
      lock.lock();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::priority_queue<Due, std::vector<Due>, std::greater<Due>> queue_;
  bool stopping_ = false;
  loadgen::Histogram waited_;
  std::thread thread_;  // last: started once the members above exist
};

// A call held until the caller gives up: finished (as cancelled) when gRPC cancels it.
class Held final : public grpc::ServerUnaryReactor {
 public:
  explicit Held(std::atomic<uint64_t>* given_up) : given_up_(given_up) {}
  void OnCancel() override {
    given_up_->fetch_add(1, std::memory_order_relaxed);
    Finish(grpc::Status(grpc::StatusCode::CANCELLED, "decision stub: never answers"));
  }
  void OnDone() override { delete this; }

 private:
  std::atomic<uint64_t>* given_up_;
};

class Stub final : public pb::DecisionService::CallbackService {
 public:
  Stub(Timer* timer, std::chrono::microseconds delay, bool never_answer)
      : timer_(timer), delay_(delay), never_answer_(never_answer) {}

  grpc::ServerUnaryReactor* Decide(grpc::CallbackServerContext* ctx,
                                   const pb::DecideRequest* /*req*/,
                                   pb::DecideResponse* resp) override {
    Clock::time_point arrived = Clock::now();
    if (never_answer_) return new Held(&given_up_);
    resp->set_decision(pb::CLIENT_DECISION_APPROVE);
    resp->set_reason("benchmark stub");
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    timer_->Add(Due{arrived + delay_, arrived, reactor});
    return reactor;
  }

  grpc::ServerUnaryReactor* Notify(grpc::CallbackServerContext* ctx,
                                   const pb::NotifyRequest* /*req*/,
                                   pb::NotifyResponse* /*resp*/) override {
    notified_.fetch_add(1, std::memory_order_relaxed);
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  uint64_t given_up() const { return given_up_.load(); }
  uint64_t notified() const { return notified_.load(); }

 private:
  Timer* timer_;
  std::chrono::microseconds delay_;
  bool never_answer_;
  std::atomic<uint64_t> given_up_{0};
  std::atomic<uint64_t> notified_{0};
};

}  // namespace

int main(int argc, char** argv) {
  std::string listen;
  long delay_us = 5000;
  bool never_answer = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--never-answer") {
      never_answer = true;
    } else if (a == "--listen" && i + 1 < argc) {
      listen = argv[++i];
    } else if (a == "--delay-us" && i + 1 < argc) {
      delay_us = std::stol(argv[++i]);
    } else {
      std::cerr << "usage: decision_stub --listen HOST:PORT [--delay-us US | --never-answer]\n";
      return 2;
    }
  }
  if (listen.empty() || delay_us < 0) {
    std::cerr << "decision_stub: --listen HOST:PORT is required (and --delay-us >= 0)\n";
    return 2;
  }
  // Block the stop signals in every thread; the main thread waits for them below.
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);

  Timer timer;
  Stub service(&timer, std::chrono::microseconds(delay_us), never_answer);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(listen, grpc::InsecureServerCredentials(), &port);
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);  // a taken port fails loudly
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) {
    std::cerr << "decision_stub: cannot listen on " << listen << "\n";
    return 1;
  }
  if (never_answer) {
    std::cerr << "decision_stub on " << listen << ": never answering Decide" << std::endl;
  } else {
    std::cerr << "decision_stub on " << listen << ": approving after " << delay_us << " us"
              << std::endl;
  }
  int sig = 0;
  sigwait(&stop, &sig);
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  server->Wait();
  const loadgen::Histogram& waited = timer.waited();
  std::cerr << "decision_stub: " << waited.total() << " Decide answered (waited us: p50 "
            << waited.quantile(0.5) << ", p99 " << waited.quantile(0.99) << ", max "
            << waited.max() << "), " << service.given_up() << " given up by the caller, "
            << service.notified() << " Notify" << std::endl;
  return 0;
}
