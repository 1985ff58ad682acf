// StagingDir: a fresh hidden folder next to a destination folder that takes the destination's name only on
// commit(). A merge or a checkpoint save that fails (or is killed) therefore never leaves a half-written folder
// under the destination's name; on failure the destructor removes the staging folder.
#pragma once
#include <string>

namespace bamba {

class StagingDir {
 public:
  // Refuses (Error) a destination that exists and is not an empty folder unless `replace`; creates the parent
  // folders if needed and the staging folder "<parent>/.<name>.partial-XXXXXX".
  StagingDir(const std::string& dest, bool replace);
  ~StagingDir();
  StagingDir(const StagingDir&) = delete;
  StagingDir& operator=(const StagingDir&) = delete;

  const std::string& path() const { return path_; }
  const std::string& dest() const { return dest_; }
  // Moves the staging folder to the destination; an existing destination (allowed by `replace`) is moved aside
  // first and deleted only once the new folder is in place.
  void commit();

 private:
  std::string dest_, path_;
  bool replace_, committed_ = false;
};

}  // namespace bamba
