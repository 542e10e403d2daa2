// A real, unique temporary directory removed (recursively) on destruction.
#ifndef KEEL_CPP_TESTS_TEMP_DIR_HPP
#define KEEL_CPP_TESTS_TEMP_DIR_HPP

#include <cstdlib>
#include <filesystem>
#include <stdexcept>
#include <string>

class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "keel-cpp-XXXXXX").string();
    if (!mkdtemp(pattern.data())) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;  // best effort: a leftover temp dir is not a test failure
    std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  /// A WAL directory inside the temp dir (keel creates it on open).
  std::string wal(const std::string& name = "wal") const { return (path_ / name).string(); }
  /// An engine data directory inside the temp dir (keel creates it on open).
  std::string engine(const std::string& name = "engine") const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

#endif
