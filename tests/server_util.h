// A `bamba serve` process for tests: started on a free port (--port 0, read back from its log), ready once
// /health answers, stopped with SIGTERM.
#pragma once
#include <httplib.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>
#include <string>
#include <thread>

#include "test_util.h"

namespace bamba::test {

class ServerProcess {
 public:
  // args: everything after `bamba serve --port 0` (shell syntax).
  explicit ServerProcess(const std::string& args) {
    log_ = make_temp_dir("serve") + "/log";
    std::string cmd = "exec '" + bamba_binary() + "' serve --port 0 " + args + " >'" + log_ + "' 2>&1";
    pid_ = ::fork();
    if (pid_ == 0) {
      ::execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    std::smatch m;
    while (std::chrono::steady_clock::now() < deadline) {
      std::string text = log();
      static const std::regex re("http://[0-9.]+:([0-9]+)");
      if (std::regex_search(text, m, re)) {
        port_ = std::stoi(m[1]);
        break;
      }
      int st;
      if (::waitpid(pid_, &st, WNOHANG) == pid_) {
        pid_ = -1;
        return;  // ready() is false; log() says why
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    while (port_ > 0 && std::chrono::steady_clock::now() < deadline) {
      auto r = client().Get("/health");
      if (r && r->status == 200) {
        ready_ = true;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  ~ServerProcess() {
    if (pid_ > 0) stop();
  }
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  bool ready() const { return ready_; }
  int port() const { return port_; }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", port_);
    c.set_read_timeout(120, 0);
    return c;
  }
  std::string log() const {
    std::ifstream f(log_);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  }
  void signal(int sig) const { ::kill(pid_, sig); }
  // SIGTERM, then the exit status (SIGKILL and -1 if it does not exit within `seconds`).
  int stop(int seconds = 30) {
    if (pid_ <= 0) return -1;
    ::kill(pid_, SIGTERM);
    return wait(seconds);
  }
  int wait(int seconds = 30) {
    int st = 0;
    for (int i = 0; i < seconds * 50; ++i) {
      if (::waitpid(pid_, &st, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, &st, 0);
    pid_ = -1;
    return -1;
  }

 private:
  pid_t pid_ = -1;
  int port_ = -1;
  bool ready_ = false;
  std::string log_;
};

}  // namespace bamba::test
