// bamba_bench: the benchmark without the CLI (until `bamba bench` is wired in src/cli/main.cpp).
// Usage: bamba_bench [preset] [device] [reps] [json_path] [test,test,...]
#include <fstream>
#include <iostream>
#include <sstream>

#include "core/error.h"
#include "engine/bench.h"

int main(int argc, char** argv) {
  bamba::BenchOptions o;
  if (argc > 1) o.preset = argv[1];
  if (argc > 2) o.device = argv[2];
  if (argc > 3) o.reps = std::stoi(argv[3]);
  std::string json = argc > 4 ? argv[4] : "bench.json";
  if (argc > 5) {
    o.tests.clear();
    std::stringstream ss(argv[5]);
    for (std::string t; std::getline(ss, t, ',');) o.tests.push_back(t);
  }
  try {
    auto r = bamba::run_bench(o, std::cerr);
    bamba::print_bench_table(r, std::cout);
    std::ofstream(json) << bamba::bench_json(r) << "\n";
  } catch (const std::exception& e) {
    std::cerr << "bamba_bench: " << e.what() << "\n";
    return 1;
  }
}
