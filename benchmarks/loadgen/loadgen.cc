// authswitch load generator: builds every AuthorizeRequest itself (unique message id and
// network reference, the card and amount of a pre-generated sequence) and sends it with the
// gRPC C++ callback API over --channels HTTP/2 connections.
//
//   closed loop:  --mode closed --concurrency C --duration S
//       C calls in flight for S seconds; each completion starts the next call.
//   open loop:    --mode open --rate R --duration S
//       one call every 1/R s on a fixed schedule, whatever the server does; latency is
//       measured from the *intended* send time, so a slow server cannot hide its queue
//       (no coordinated omission).
//   --start-at-ns T: start sending at T (CLOCK_MONOTONIC, ns) rather than once connected,
//       so that two generators can take over from each other at a planned instant.
//
// The parameters file (written by benchmarks/loadgen.py):
//   cards <N>            then N lines "<pan> <expiry YYMM> <cvv2>"
//   requests <M>         then M lines "<card index> <amount minor>"   (used cyclically)
//
// Prints one JSON object (to --out, or stdout): counts, errors by kind, latency percentiles
// and the histogram (µs) of the calls answered (status OK, "latency_us"), the same for every
// gRPC status seen ("latency_by_status_us": OK, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED...,
// each measured like the answers, from the intended send time), the same again measured from
// the instant each call was actually handed to gRPC ("latency_from_send_by_status_us": when
// the generator itself falls behind its schedule, the difference is its own delay, not the
// server's), and the generator's own CPU time. Every call has a deadline of --deadline-ms
// (10 s unless told).
#include <grpcpp/grpcpp.h>
#include <sys/resource.h>
#include <time.h>

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "authswitch/v1/authorization.grpc.pb.h"
#include "histogram.h"

namespace pb = authswitch::v1;

namespace {

int64_t now_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

void sleep_until_ns(int64_t t) {
  timespec ts{};
  ts.tv_sec = t / 1'000'000'000;
  ts.tv_nsec = t % 1'000'000'000;
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr) == EINTR) {
  }
}

double cpu_seconds(const timeval& tv) {
  return static_cast<double>(tv.tv_sec) + static_cast<double>(tv.tv_usec) / 1e6;
}

const char* status_name(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK: return "OK";
    case grpc::StatusCode::CANCELLED: return "CANCELLED";
    case grpc::StatusCode::UNKNOWN: return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND: return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS: return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED: return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE: return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED: return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL: return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS: return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED: return "UNAUTHENTICATED";
    default: return "OTHER";
  }
}

std::string json_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += c;
    }
  }
  return out;
}

// A histogram's count, percentiles, max and non-empty buckets, as a JSON object.
std::string histogram_json(const loadgen::Histogram& h) {
  std::ostringstream j;
  j << "{\"count\":" << h.total() << ",\"p50\":" << h.quantile(0.50)
    << ",\"p90\":" << h.quantile(0.90) << ",\"p99\":" << h.quantile(0.99)
    << ",\"p999\":" << h.quantile(0.999) << ",\"max\":" << h.max()
    << ",\"buckets\":" << h.buckets_json() << "}";
  return j.str();
}

constexpr int kStatusCodes = 17;  // grpc::StatusCode OK (0) .. UNAUTHENTICATED (16)

struct Options {
  std::string target = "127.0.0.1:50051";
  std::string params;
  std::string prefix = "lg";
  std::string source = "bench";
  std::string asset = "GBP";
  std::string mode = "closed";
  std::string out;
  int concurrency = 64;
  double rate = 500;
  double duration_s = 10;
  int channels = 2;
  int deadline_ms = 10'000;
  double late_us = 1'000;
  int64_t start_at_ns = 0;  // CLOCK_MONOTONIC; 0: as soon as connected
};

void usage() {
  std::cerr << "usage: loadgen --params FILE [--target HOST:PORT] [--mode closed|open]\n"
               "               [--concurrency C] [--rate R] [--duration S] [--channels K]\n"
               "               [--prefix ID] [--source S] [--asset A] [--deadline-ms D]\n"
               "               [--start-at-ns T] [--out FILE]\n";
}

bool parse(int argc, char** argv, Options* o) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&](std::string* v) {
      if (i + 1 >= argc) return false;
      *v = argv[++i];
      return true;
    };
    std::string v;
    if (a == "--help" || a == "-h") return false;
    if (!next(&v)) return false;
    if (a == "--target") o->target = v;
    else if (a == "--params") o->params = v;
    else if (a == "--prefix") o->prefix = v;
    else if (a == "--source") o->source = v;
    else if (a == "--asset") o->asset = v;
    else if (a == "--mode") o->mode = v;
    else if (a == "--out") o->out = v;
    else if (a == "--concurrency") o->concurrency = std::stoi(v);
    else if (a == "--rate") o->rate = std::stod(v);
    else if (a == "--duration") o->duration_s = std::stod(v);
    else if (a == "--channels") o->channels = std::stoi(v);
    else if (a == "--deadline-ms") o->deadline_ms = std::stoi(v);
    else if (a == "--late-us") o->late_us = std::stod(v);
    else if (a == "--start-at-ns") o->start_at_ns = std::stoll(v);
    else {
      std::cerr << "unknown option " << a << "\n";
      return false;
    }
  }
  if (o->params.empty()) return false;
  if (o->mode != "closed" && o->mode != "open") return false;
  return o->concurrency > 0 && o->rate > 0 && o->duration_s > 0 && o->channels > 0;
}

struct Card {
  std::string pan, expiry, cvv2;
};

struct Item {
  uint32_t card;
  int64_t amount;
};

bool load_params(const std::string& path, std::vector<Card>* cards, std::vector<Item>* items) {
  std::ifstream in(path);
  if (!in) return false;
  std::string word;
  size_t n = 0;
  if (!(in >> word >> n) || word != "cards" || n == 0) return false;
  cards->resize(n);
  for (auto& c : *cards) {
    if (!(in >> c.pan >> c.expiry >> c.cvv2)) return false;
  }
  if (!(in >> word >> n) || word != "requests" || n == 0) return false;
  items->resize(n);
  for (auto& it : *items) {
    if (!(in >> it.card >> it.amount) || it.card >= cards->size()) return false;
  }
  return true;
}

struct Call {
  grpc::ClientContext ctx;
  pb::AuthorizeRequest req;
  pb::AuthorizeResponse resp;
  int64_t intended_ns = 0;
  int64_t sent_ns = 0;
};

// The sender (this thread in the open loop; the completions in the closed loop) starts calls
// with the callback API; gRPC's own threads run the completions, which record the latency
// and, in the closed loop, start the next call at once.
class Generator {
 public:
  Generator(const Options& o, std::vector<Card> cards, std::vector<Item> items)
      : o_(o), cards_(std::move(cards)), items_(std::move(items)) {
    for (auto& h : by_status_) h = std::make_unique<loadgen::Histogram>();
    for (auto& h : from_send_) h = std::make_unique<loadgen::Histogram>();
  }

  bool connect() {
    auto deadline = std::chrono::system_clock::now() + std::chrono::seconds(10);
    for (int i = 0; i < o_.channels; ++i) {
      grpc::ChannelArguments args;
      // A channel of its own per stub: separate HTTP/2 connections, not one shared one.
      args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
      args.SetInt("authswitch.loadgen.channel", i);
      auto channel = grpc::CreateCustomChannel(o_.target, grpc::InsecureChannelCredentials(),
                                               args);
      if (!channel->WaitForConnected(deadline)) {
        std::cerr << "loadgen: cannot connect to " << o_.target << "\n";
        return false;
      }
      stubs_.push_back(pb::AuthorizationService::NewStub(channel));
    }
    return true;
  }

  void run() {
    closed_ = o_.mode == "closed";
    const int64_t duration_ns = static_cast<int64_t>(o_.duration_s * 1e9);
    const int64_t connected_ns = now_ns();
    start_ns_ = connected_ns + 5'000'000;  // a moment to settle after connecting
    if (o_.start_at_ns > 0) {
      // Planned: late only if connecting took longer than the caller allowed for.
      start_late_ns_ = connected_ns > o_.start_at_ns ? connected_ns - o_.start_at_ns : 0;
      start_ns_ = o_.start_at_ns + start_late_ns_;
    }
    end_ns_ = start_ns_ + duration_ns;
    sleep_until_ns(start_ns_);
    if (closed_) {
      for (int i = 0; i < o_.concurrency; ++i) issue(now_ns());
    } else {
      // A fixed schedule: call i is due at start + i/rate, whatever happened before it.
      const long double per_call_ns = 1e9L / static_cast<long double>(o_.rate);
      for (uint64_t i = 0;; ++i) {
        const int64_t intended =
            start_ns_ + static_cast<int64_t>(static_cast<long double>(i) * per_call_ns);
        if (intended >= end_ns_) break;
        sleep_until_ns(intended);
        const int64_t lag = now_ns() - intended;
        if (lag > max_send_lag_ns_) max_send_lag_ns_ = lag;
        if (static_cast<double>(lag) > o_.late_us * 1e3) ++late_sends_;
        issue(intended);
      }
    }
    {
      std::unique_lock<std::mutex> lock(done_mu_);
      while (outstanding_.load() > 0) done_cv_.wait_for(lock, std::chrono::milliseconds(20));
    }
    finished_ns_ = now_ns();
  }

  std::string report_json() const {
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    const double user = cpu_seconds(ru.ru_utime), sys = cpu_seconds(ru.ru_stime);
    const double window_s = static_cast<double>(end_ns_ - start_ns_) / 1e9;
    const double elapsed_s = static_cast<double>(finished_ns_ - start_ns_) / 1e9;
    const uint64_t completed = ok_ + bad_code_ + rpc_errors_;
    std::ostringstream j;
    j.setf(std::ios::fixed);
    j.precision(6);
    j << "{\"mode\":\"" << o_.mode << "\",\"target\":\"" << json_escape(o_.target) << "\""
      << ",\"concurrency\":" << (closed_ ? o_.concurrency : 0)
      << ",\"rate_per_s\":" << (closed_ ? 0.0 : o_.rate) << ",\"channels\":" << o_.channels
      << ",\"window_s\":" << window_s << ",\"elapsed_s\":" << elapsed_s
      << ",\"sent\":" << sent_.load() << ",\"completed\":" << completed
      << ",\"completed_in_window\":" << completed_in_window_.load()
      << ",\"completed_per_s\":" << static_cast<double>(completed_in_window_.load()) / window_s
      << ",\"answered_in_window\":" << answered_in_window_.load()
      // Decisions per second: calls answered (status OK) in the window; a refusal or any
      // other gRPC error is no decision and is not counted.
      << ",\"throughput_per_s\":" << static_cast<double>(answered_in_window_.load()) / window_s
      << ",\"ok\":" << ok_.load() << ",\"rpc_errors\":" << rpc_errors_.load()
      << ",\"bad_codes\":" << bad_code_.load();
    {
      std::lock_guard<std::mutex> lock(err_mu_);
      j << ",\"rpc_errors_by_status\":{";
      bool first = true;
      for (const auto& [k, v] : rpc_errors_by_status_) {
        j << (first ? "" : ",") << "\"" << k << "\":" << v;
        first = false;
      }
      j << "},\"response_codes\":{";
      first = true;
      for (const auto& [k, v] : codes_) {
        j << (first ? "" : ",") << "\"" << json_escape(k) << "\":" << v;
        first = false;
      }
      j << "},\"first_rpc_error\":\"" << json_escape(first_rpc_error_) << "\"";
    }
    j << ",\"late_sends\":" << late_sends_
      << ",\"max_send_lag_us\":" << static_cast<double>(max_send_lag_ns_) / 1e3
      << ",\"deadline_ms\":" << o_.deadline_ms
      << ",\"start_late_ms\":" << static_cast<double>(start_late_ns_) / 1e6
      << ",\"latency_us\":" << histogram_json(*by_status_[0])
      << ",\"latency_by_status_us\":" << by_status_json(by_status_)
      << ",\"latency_from_send_by_status_us\":" << by_status_json(from_send_)
      << ",\"cpu_s\":{\"user\":" << user << ",\"system\":" << sys << ",\"total\":" << user + sys
      << "}}";
    return j.str();
  }

  using ByStatus = std::array<std::unique_ptr<loadgen::Histogram>, kStatusCodes>;

  // {"OK": histogram, "RESOURCE_EXHAUSTED": histogram, ...}: the statuses seen.
  static std::string by_status_json(const ByStatus& by_status) {
    std::ostringstream j;
    j << "{";
    bool first = true;
    for (int code = 0; code < kStatusCodes; ++code) {
      const loadgen::Histogram& h = *by_status[code];
      if (h.total() == 0) continue;
      j << (first ? "" : ",") << "\"" << status_name(static_cast<grpc::StatusCode>(code))
        << "\":" << histogram_json(h);
      first = false;
    }
    j << "}";
    return j.str();
  }

 private:
  void fill(pb::AuthorizeRequest* r, uint64_t n) const {
    const Item& it = items_[n % items_.size()];
    const Card& c = cards_[it.card];
    const std::string id = o_.prefix + "-" + std::to_string(n);
    r->set_source(o_.source);
    r->set_message_id(id);
    r->set_network_reference("nr-" + id);
    r->set_transaction_type(pb::TRANSACTION_TYPE_PURCHASE);
    r->set_pan(c.pan);
    pb::AuthData* auth = r->mutable_auth();
    auth->set_expiry(c.expiry);
    auth->set_cvv2(c.cvv2);
    pb::Money* tx = r->mutable_transaction_amount();
    tx->set_amount_minor(it.amount);
    tx->set_asset(o_.asset);
    pb::Money* billing = r->mutable_billing_amount();
    billing->set_amount_minor(it.amount);
    billing->set_asset(o_.asset);
    pb::Merchant* m = r->mutable_merchant();
    m->set_mcc("5411");
    m->set_country("GB");
    m->set_name("Bench shop");
    r->set_channel(pb::CHANNEL_ECOMMERCE);
  }

  void issue(int64_t intended_ns) {
    const uint64_t n = seq_.fetch_add(1, std::memory_order_relaxed);
    auto* call = new Call;
    fill(&call->req, n);
    call->intended_ns = intended_ns;
    call->ctx.set_deadline(std::chrono::system_clock::now() +
                           std::chrono::milliseconds(o_.deadline_ms));
    outstanding_.fetch_add(1);
    sent_.fetch_add(1, std::memory_order_relaxed);
    call->sent_ns = now_ns();
    stubs_[n % stubs_.size()]->async()->Authorize(
        &call->ctx, &call->req, &call->resp,
        [this, call](const grpc::Status& status) { done(call, status); });
  }

  void done(Call* call, const grpc::Status& status) {
    const int64_t t = now_ns();
    int code = static_cast<int>(status.error_code());
    if (code < 0 || code >= kStatusCodes) code = static_cast<int>(grpc::StatusCode::UNKNOWN);
    by_status_[code]->record(static_cast<uint64_t>((t - call->intended_ns) / 1000));
    from_send_[code]->record(static_cast<uint64_t>((t - call->sent_ns) / 1000));
    if (status.ok()) {
      if (call->resp.response_code() == "00") {
        ok_.fetch_add(1, std::memory_order_relaxed);
      } else {
        bad_code_.fetch_add(1, std::memory_order_relaxed);
        std::lock_guard<std::mutex> lock(err_mu_);
        ++codes_[call->resp.response_code()];
      }
    } else {
      rpc_errors_.fetch_add(1, std::memory_order_relaxed);
      std::lock_guard<std::mutex> lock(err_mu_);
      ++rpc_errors_by_status_[status_name(status.error_code())];
      if (first_rpc_error_.empty()) first_rpc_error_ = status.error_message();
    }
    if (t <= end_ns_) {
      completed_in_window_.fetch_add(1, std::memory_order_relaxed);
      if (status.ok()) answered_in_window_.fetch_add(1, std::memory_order_relaxed);
    }
    delete call;
    if (closed_ && t < end_ns_) issue(t);  // the slot goes straight back to work
    if (outstanding_.fetch_sub(1) == 1) {
      std::lock_guard<std::mutex> lock(done_mu_);
      done_cv_.notify_all();
    }
  }

  const Options o_;
  const std::vector<Card> cards_;
  const std::vector<Item> items_;
  std::vector<std::unique_ptr<pb::AuthorizationService::Stub>> stubs_;
  bool closed_ = true;
  int64_t start_ns_ = 0, end_ns_ = 0, finished_ns_ = 0, start_late_ns_ = 0;
  int64_t max_send_lag_ns_ = 0;
  uint64_t late_sends_ = 0;
  std::atomic<uint64_t> seq_{0}, sent_{0}, ok_{0}, bad_code_{0}, rpc_errors_{0};
  std::atomic<uint64_t> completed_in_window_{0}, answered_in_window_{0};
  std::atomic<int64_t> outstanding_{0};
  // Latency of the calls that ended with each gRPC status, indexed by its code: from the
  // intended send time, and from the actual one.
  ByStatus by_status_, from_send_;
  mutable std::mutex err_mu_;
  std::map<std::string, uint64_t> rpc_errors_by_status_, codes_;
  std::string first_rpc_error_;
  std::mutex done_mu_;
  std::condition_variable done_cv_;
};

}  // namespace

int main(int argc, char** argv) {
  Options o;
  if (!parse(argc, argv, &o)) {
    usage();
    return 2;
  }
  std::vector<Card> cards;
  std::vector<Item> items;
  if (!load_params(o.params, &cards, &items)) {
    std::cerr << "loadgen: cannot read parameters from " << o.params << "\n";
    return 2;
  }
  auto gen = std::make_unique<Generator>(o, std::move(cards), std::move(items));
  if (!gen->connect()) return 1;
  gen->run();
  const std::string json = gen->report_json();
  if (o.out.empty()) {
    std::cout << json << std::endl;
  } else {
    std::ofstream out(o.out);
    out << json << "\n";
    if (!out) {
      std::cerr << "loadgen: cannot write " << o.out << "\n";
      return 1;
    }
  }
  return 0;
}
