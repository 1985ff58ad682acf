#include "io/staging_dir.h"

#include <stdlib.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "core/error.h"

namespace bamba {

namespace fs = std::filesystem;

namespace {

// True when `p` names something that may not be silently replaced: a file, or a folder with entries.
bool occupied(const fs::path& p) {
  std::error_code ec;
  auto st = fs::symlink_status(p, ec);
  if (ec || !fs::exists(st)) return false;
  if (!fs::is_directory(st)) return true;
  return !fs::is_empty(p, ec) || ec;
}

// "<parent>/.<name>.<what>-XXXXXX", created with a fresh unique name.
std::string make_temp_dir(const fs::path& parent, const fs::path& name, const char* what) {
  std::string tmpl = (parent / cat(".", name.string(), ".", what, "-XXXXXX")).string();
  if (!::mkdtemp(tmpl.data())) fail(tmpl, ": cannot create a folder (", std::strerror(errno), ")");
  return tmpl;
}

}  // namespace

StagingDir::StagingDir(const std::string& dest, bool replace) : replace_(replace) {
  if (dest.empty()) fail("the output folder name is empty");
  fs::path d = fs::path(dest).lexically_normal();
  if (d.filename().empty()) d = d.parent_path();  // "out/" -> "out"
  dest_ = d.string();
  if (occupied(d) && !replace)
    fail(dest_, ": exists and is not an empty folder; choose another output folder or pass --force to replace it");
  fs::path parent = d.has_parent_path() ? d.parent_path() : fs::path(".");
  std::error_code ec;
  fs::create_directories(parent, ec);
  if (ec) fail(parent.string(), ": cannot create the output's parent folder (", ec.message(), ")");
  path_ = make_temp_dir(parent, d.filename(), "partial");
  ::chmod(path_.c_str(), 0755);  // mkdtemp makes it private; the model folder it becomes should not be
}

StagingDir::~StagingDir() {
  if (committed_) return;
  std::error_code ec;
  fs::remove_all(path_, ec);  // best effort: nothing useful to do about a failure while unwinding
}

void StagingDir::commit() {
  const fs::path d(dest_);
  std::string aside;
  if (occupied(d)) {
    if (!replace_) fail(dest_, ": appeared while writing; the new folder is left in ", path_);
    aside = make_temp_dir(d.has_parent_path() ? d.parent_path() : fs::path("."), d.filename(), "old");
    if (std::rename(dest_.c_str(), (aside + "/old").c_str()) != 0)
      fail(dest_, ": cannot move the existing folder aside (", std::strerror(errno), ")");
  }
  // rename(2) replaces an empty folder atomically, and fails on a non-empty one.
  if (std::rename(path_.c_str(), dest_.c_str()) != 0) {
    int e = errno;
    if (!aside.empty()) std::rename((aside + "/old").c_str(), dest_.c_str());
    fail(dest_, ": cannot move the new folder into place (", std::strerror(e), ")");
  }
  committed_ = true;
  if (!aside.empty()) {
    std::error_code ec;
    fs::remove_all(aside, ec);
  }
}

}  // namespace bamba
