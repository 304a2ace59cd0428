// A trivial AuthorizationService in C++ (callback API): approves every request at once.
// Used only to measure the load generator's own ceiling: against it, the generator and a
// server far cheaper than any Python one share the machine.
//
//   echo_server --listen 127.0.0.1:PORT      (SIGTERM or SIGINT stops it)
#include <grpcpp/grpcpp.h>
#include <signal.h>

#include <iostream>
#include <memory>
#include <string>

#include "authswitch/v1/authorization.grpc.pb.h"

namespace pb = authswitch::v1;

namespace {

class Echo final : public pb::AuthorizationService::CallbackService {
  grpc::ServerUnaryReactor* Authorize(grpc::CallbackServerContext* ctx,
                                      const pb::AuthorizeRequest* req,
                                      pb::AuthorizeResponse* resp) override {
    resp->set_decision(pb::DECISION_APPROVED);
    resp->set_response_code("00");
    resp->set_reason(pb::REASON_APPROVED);
    resp->set_authorization_code("123456");
    *resp->mutable_approved_amount() = req->billing_amount();
    resp->set_decision_id(req->message_id());
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
};

}  // namespace

int main(int argc, char** argv) {
  std::string listen = "127.0.0.1:50099";
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::string(argv[i]) == "--listen") listen = argv[i + 1];
  }
  // Block the stop signals in every thread; the main thread waits for them below.
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);

  Echo service;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(listen, grpc::InsecureServerCredentials(), &port);
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);  // a taken port fails loudly
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) {
    std::cerr << "echo_server: cannot listen on " << listen << "\n";
    return 1;
  }
  std::cerr << "echo_server listening on " << listen << std::endl;
  int sig = 0;
  sigwait(&stop, &sig);
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  return 0;
}
