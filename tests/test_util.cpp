#include "test_util.h"

#include "backend/backend.h"

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

namespace bamba::test {

std::vector<float> host(Backend& be, Tensor t) {
  std::vector<float> v(size_t(t.numel()));
  be.to_host_f32(t, v.data());
  return v;
}

double rel_l2(const std::vector<float>& a, const std::vector<float>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (double(a[i]) - ref[i]) * (double(a[i]) - ref[i]);
    den += double(ref[i]) * ref[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

std::string make_temp_dir(const std::string& tag) {
  std::random_device rd;
  auto base = std::filesystem::temp_directory_path() / ("bamba-" + tag + "-" + std::to_string(rd()) + std::to_string(::getpid()));
  std::filesystem::create_directories(base);
  return base.string();
}

static std::string slurp(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

RunResult run_bamba(const std::string& args, const std::string& stdin_text) {
  std::string dir = make_temp_dir("run");
  std::string in = dir + "/in", out = dir + "/out", err = dir + "/err";
  std::ofstream(in, std::ios::binary) << stdin_text;
  std::string cmd = "'" + bamba_binary() + "' " + args + " <'" + in + "' >'" + out + "' 2>'" + err + "'";
  int st = std::system(cmd.c_str());
  RunResult r{WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st), slurp(out), slurp(err)};
  std::filesystem::remove_all(dir);
  return r;
}

}  // namespace bamba::test
