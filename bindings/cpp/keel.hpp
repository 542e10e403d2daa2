// keel.hpp — C++17 wrapper of the keel C API (include/keel.h).
//
// Header-only: every function is inline, so any number of translation units
// may include it. Link against libkeel (shared or static) as for the C API.
//
// Style (after wasmtime's wasmtime.hh):
//   * Each C handle is owned by one move-only class built on
//     std::unique_ptr<T, Deleter>. `raw()` borrows the handle, `release()`
//     gives ownership back to the caller (who must then close it with the C
//     API). A moved-from, released or closed object is empty: destroying it
//     is a no-op and every call on it returns Status::Closed.
//   * Fallible calls return [[nodiscard]] keel::Result<T> (or Result<void>)
//     holding either the value or a keel::Error. No exceptions are thrown
//     unless KEEL_CPP_EXCEPTIONS is defined before including this header;
//     then Result::unwrap()/value() throw keel::Exception on error. Without
//     it they print the error to stderr and call std::abort().
//   * keel::Error copies the code and message out of keel_error_t, so it is
//     an ordinary value type; the C error object is freed immediately.
//
// Threads: keel::Wal is internally synchronised; any number of threads may
// call its const members on one shared Wal. Moving, close() and destruction
// must not race with other calls. keel::WalReader may move between threads
// but must be used by one thread at a time (as keel_wal_reader_t).
#ifndef KEEL_HPP
#define KEEL_HPP

#include "keel.h"

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <initializer_list>
#include <iterator>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#ifdef KEEL_CPP_EXCEPTIONS
#if !defined(__cpp_exceptions) && !defined(__EXCEPTIONS)
#error "KEEL_CPP_EXCEPTIONS is defined but exceptions are disabled (-fno-exceptions)"
#endif
#include <stdexcept>
#endif

namespace keel {

// ---- status and errors ----------------------------------------------------

/// Mirrors KEEL_STATUS_*; the values are the C values (never renumbered).
enum class Status : keel_status_t {
  Ok = KEEL_STATUS_OK,
  NullArgument = KEEL_STATUS_NULL_ARGUMENT,
  InvalidArgument = KEEL_STATUS_INVALID_ARGUMENT,
  Io = KEEL_STATUS_IO,
  Corruption = KEEL_STATUS_CORRUPTION,
  NotFound = KEEL_STATUS_NOT_FOUND,
  Busy = KEEL_STATUS_BUSY,
  Timeout = KEEL_STATUS_TIMEOUT,
  Closed = KEEL_STATUS_CLOSED,
  Poisoned = KEEL_STATUS_POISONED,
  Panic = KEEL_STATUS_PANIC,
  BufferTooSmall = KEEL_STATUS_BUFFER_TOO_SMALL,
  Truncated = KEEL_STATUS_TRUNCATED,
  NotLeader = KEEL_STATUS_NOT_LEADER,
  Unsupported = KEEL_STATUS_UNSUPPORTED,
  NoSpace = KEEL_STATUS_NO_SPACE,
};

// A new KEEL_STATUS_* value must get an enumerator above; this trips when
// the header grows one (statuses are dense and never renumbered).
static_assert(KEEL_STATUS_NO_SPACE == 15, "keel.h has new status codes: extend keel::Status");

/// The C name of a status ("OK", "INVALID_ARGUMENT", ...); static storage.
inline const char* to_string(Status s) noexcept {
  return keel_status_str(static_cast<keel_status_t>(s));
}

/// A failed call: status code and message. A plain copyable value.
class Error {
 public:
  Error(Status code, std::string message) : code_(code), message_(std::move(message)) {}

  Status code() const noexcept { return code_; }
  const std::string& message() const noexcept { return message_; }
  /// "INVALID_ARGUMENT: segment_size 1024 is outside ..." for logs.
  std::string to_string() const { return std::string(keel::to_string(code_)) + ": " + message_; }

 private:
  Status code_;
  std::string message_;
};

#ifdef KEEL_CPP_EXCEPTIONS
/// Thrown by Result::unwrap()/value() on error when KEEL_CPP_EXCEPTIONS is on.
class Exception : public std::runtime_error {
 public:
  explicit Exception(Error e) : std::runtime_error(e.to_string()), error_(std::move(e)) {}
  const Error& error() const noexcept { return error_; }
  Status code() const noexcept { return error_.code(); }

 private:
  Error error_;
};
#endif

namespace detail {

/// Owns the keel_error_t a C call may write through its `err` argument.
struct ErrorOut {
  keel_error_t* ptr = nullptr;
  ErrorOut() = default;
  ErrorOut(const ErrorOut&) = delete;
  ErrorOut& operator=(const ErrorOut&) = delete;
  ~ErrorOut() { keel_error_free(ptr); }
  keel_error_t** out() noexcept { return &ptr; }

  /// The Error for a failed call returning `status`; the message comes
  /// from the error object, or the status name when there is none.
  Error take(keel_status_t status) {
    std::string message = ptr ? keel_error_message(ptr) : keel_status_str(status);
    keel_error_free(ptr);
    ptr = nullptr;
    return Error(static_cast<Status>(status), std::move(message));
  }
};

/// Error for calls on an empty (moved-from, released, closed) object.
inline Error empty_handle(const char* type) {
  return Error(Status::Closed, std::string(type) + " is empty (closed, released or moved from)");
}

/// Reached when the value of a failed Result (or the error of a good one)
/// is requested: throws with KEEL_CPP_EXCEPTIONS, else aborts loudly.
[[noreturn]] inline void bad_access(const Error* e) {
#ifdef KEEL_CPP_EXCEPTIONS
  if (e) throw Exception(*e);
  throw std::logic_error("keel::Result::err() called on a successful result");
#else
  std::fprintf(stderr, "keel: %s\n",
               e ? ("value of a failed keel::Result: " + e->to_string()).c_str()
                 : "keel::Result::err() called on a successful result");
  std::abort();
#endif
}

}  // namespace detail

/// Either a T or an Error. [[nodiscard]]: ignoring a Result is a warning
/// (an error under -Werror), so failures cannot be dropped by accident.
/// Not implicitly convertible to T or bool: test it with ok() or `if (r)`.
template <class T>
class [[nodiscard]] Result {
  static_assert(!std::is_same_v<std::decay_t<T>, Error>, "Result<Error> is ambiguous");

 public:
  Result(T value) : v_(std::in_place_index<0>, std::move(value)) {}  // NOLINT: implicit on purpose
  Result(Error error) : v_(std::in_place_index<1>, std::move(error)) {}  // NOLINT

  bool ok() const noexcept { return v_.index() == 0; }
  explicit operator bool() const noexcept { return ok(); }

  /// The error; calling it on a successful Result is a bug (see bad_access).
  const Error& err() const {
    if (ok()) detail::bad_access(nullptr);
    return std::get<1>(v_);
  }

  /// The value; on error throws (KEEL_CPP_EXCEPTIONS) or aborts.
  T& value() & { check(); return std::get<0>(v_); }
  const T& value() const& { check(); return std::get<0>(v_); }
  T&& value() && { check(); return std::get<0>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  /// Moves the value out (the Result is left holding a moved-from T).
  T unwrap() { check(); return std::get<0>(std::move(v_)); }

  template <class U>
  T value_or(U&& fallback) const& { return ok() ? std::get<0>(v_) : static_cast<T>(std::forward<U>(fallback)); }
  template <class U>
  T value_or(U&& fallback) && { return ok() ? std::get<0>(std::move(v_)) : static_cast<T>(std::forward<U>(fallback)); }

 private:
  void check() const {
    if (!ok()) detail::bad_access(&std::get<1>(v_));
  }
  std::variant<T, Error> v_;
};

/// Success without a value, or an Error.
template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error error) : error_(std::move(error)) {}  // NOLINT: implicit on purpose

  bool ok() const noexcept { return !error_.has_value(); }
  explicit operator bool() const noexcept { return ok(); }
  const Error& err() const {
    if (ok()) detail::bad_access(nullptr);
    return *error_;
  }
  /// Throws (KEEL_CPP_EXCEPTIONS) or aborts when this holds an error.
  void value() const {
    if (!ok()) detail::bad_access(&*error_);
  }
  void unwrap() const { value(); }

 private:
  std::optional<Error> error_;
};

namespace detail {
/// Result<void> from a C status (taking the error object when it failed).
inline Result<void> check(keel_status_t status, ErrorOut& err) {
  if (status == KEEL_STATUS_OK) return {};
  return err.take(status);
}
}  // namespace detail

// ---- versions ---------------------------------------------------------------

/// Version string of the loaded library, e.g. "0.1.0".
inline std::string_view version() noexcept { return keel_version(); }

/// Compares the ABI this header was written for (KEEL_ABI_VERSION) with the
/// loaded library's; Status::Unsupported when they differ. Wal::open()
/// calls it (once per process), so most programs need not.
inline Result<void> check_abi() {
  const uint32_t loaded = keel_abi_version();
  if (loaded == KEEL_ABI_VERSION) return {};
  return Error(Status::Unsupported, "keel.h was written for ABI " + std::to_string(KEEL_ABI_VERSION) +
                                        " but the loaded libkeel has ABI " + std::to_string(loaded) +
                                        " (version " + keel_version() + ")");
}

// ---- bytes --------------------------------------------------------------

/// A borrowed (pointer, size) byte range: what append() takes. Built
/// implicitly from std::string_view, std::string, and contiguous vectors
/// of bytes; the caller keeps the memory alive for the call.
class ByteView {
 public:
  constexpr ByteView() noexcept = default;
  ByteView(const void* data, size_t size) noexcept : data_(static_cast<const uint8_t*>(data)), size_(size) {}
  ByteView(std::string_view s) noexcept : ByteView(s.data(), s.size()) {}          // NOLINT
  ByteView(const std::string& s) noexcept : ByteView(s.data(), s.size()) {}        // NOLINT
  ByteView(const char* s) noexcept : ByteView(std::string_view(s)) {}              // NOLINT
  ByteView(const std::vector<uint8_t>& v) noexcept : ByteView(v.data(), v.size()) {}  // NOLINT
  ByteView(const std::vector<char>& v) noexcept : ByteView(v.data(), v.size()) {}     // NOLINT

  const uint8_t* data() const noexcept { return data_; }
  size_t size() const noexcept { return size_; }
  bool empty() const noexcept { return size_ == 0; }

 private:
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// ---- options --------------------------------------------------------------

/// keel_wal_options_t.durability (see KEEL_DURABILITY_*).
enum class Durability : uint32_t {
  Sync = KEEL_DURABILITY_SYNC,          ///< append returns once durable (default)
  Periodic = KEEL_DURABILITY_PERIODIC,  ///< background sync every sync_interval
  None = KEEL_DURABILITY_NONE,          ///< only Wal::sync() syncs
};

/// keel_wal_options_t.recovery_mode (see KEEL_RECOVERY_*).
enum class RecoveryMode : uint32_t {
  TolerateTail = KEEL_RECOVERY_TOLERATE_TAIL,  ///< default: cut a torn tail
  Absolute = KEEL_RECOVERY_ABSOLUTE,
  PointInTime = KEEL_RECOVERY_POINT_IN_TIME,
  Salvage = KEEL_RECOVERY_SALVAGE,
};

/// How far a reader reads (KEEL_WAL_READ_*).
enum class ReadUpto : uint32_t {
  Durable = KEEL_WAL_READ_DURABLE,    ///< stop at the durable watermark
  Appended = KEEL_WAL_READ_APPENDED,  ///< include appended, unsynced records
};

/// Options of Wal::open(): a copyable value wrapping keel_wal_options_t,
/// filled with the library defaults by keel_wal_options_init(). Setters
/// chain; values are validated by the library when the WAL opens.
class WalOptions {
 public:
  WalOptions() noexcept { keel_wal_options_init(&raw_); }  // cannot fail: the pointer is valid

  WalOptions& durability(Durability d) noexcept { raw_.durability = static_cast<uint32_t>(d); return *this; }
  /// Interval of Durability::Periodic (1 ms to 60 s). Out-of-range values
  /// are clamped to ones the library rejects instead of wrapping around.
  WalOptions& sync_interval(std::chrono::milliseconds ms) noexcept {
    const auto n = ms.count();
    raw_.sync_interval_ms = n < 0 ? 0u
                            : static_cast<unsigned long long>(n) > std::numeric_limits<uint32_t>::max()
                                ? std::numeric_limits<uint32_t>::max()
                                : static_cast<uint32_t>(n);
    return *this;
  }
  WalOptions& recovery(RecoveryMode m) noexcept { raw_.recovery_mode = static_cast<uint32_t>(m); return *this; }
  WalOptions& segment_size(uint64_t bytes) noexcept { raw_.segment_size = bytes; return *this; }
  WalOptions& max_record_size(uint64_t bytes) noexcept { raw_.max_record_size = bytes; return *this; }

  Durability durability() const noexcept { return static_cast<Durability>(raw_.durability); }
  std::chrono::milliseconds sync_interval() const noexcept { return std::chrono::milliseconds(raw_.sync_interval_ms); }
  RecoveryMode recovery() const noexcept { return static_cast<RecoveryMode>(raw_.recovery_mode); }
  uint64_t segment_size() const noexcept { return raw_.segment_size; }
  uint64_t max_record_size() const noexcept { return raw_.max_record_size; }

  /// The C struct, for fields this wrapper does not know yet.
  keel_wal_options_t& raw() noexcept { return raw_; }
  const keel_wal_options_t& raw() const noexcept { return raw_; }

 private:
  keel_wal_options_t raw_;
};

// ---- reader -----------------------------------------------------------------

/// One record, owned.
struct Record {
  uint64_t seq = 0;
  std::vector<uint8_t> data;

  std::string_view view() const noexcept {
    return {reinterpret_cast<const char*>(data.data()), data.size()};
  }
  std::string str() const { return std::string(view()); }
};

/// One record borrowed from the reader's buffer: valid until the next call
/// on that reader (or its destruction or move).
struct RecordView {
  uint64_t seq = 0;
  ByteView data;

  std::string_view view() const noexcept {
    return {reinterpret_cast<const char*>(data.data()), data.size()};
  }
};

/// Cursor over a WAL (owns a keel_wal_reader_t, closed by the destructor).
/// Made by Wal::reader(). It pins the segments it has yet to read, follows
/// the log as it grows, and may outlive its Wal (calls then fail with
/// Status::Closed). Use it from one thread at a time.
class WalReader {
  struct Deleter {
    void operator()(keel_wal_reader_t* r) const noexcept { keel_wal_reader_close(r); }
  };

 public:
  /// An empty reader.
  WalReader() noexcept = default;
  /// Takes ownership of a reader opened through the C API.
  explicit WalReader(keel_wal_reader_t* owned) noexcept : ptr_(owned) {}

  WalReader(WalReader&&) noexcept = default;
  WalReader& operator=(WalReader&&) noexcept = default;
  WalReader(const WalReader&) = delete;
  WalReader& operator=(const WalReader&) = delete;

  /// The next record, copied out; std::nullopt when the reader has caught
  /// up (call again later to follow the log).
  Result<std::optional<Record>> next() {
    auto v = next_view();
    if (!v) return v.err();
    if (!v->has_value()) return std::optional<Record>();
    const RecordView& rv = **v;
    return std::optional<Record>(Record{rv.seq, std::vector<uint8_t>(rv.data.data(), rv.data.data() + rv.data.size())});
  }

  /// Like next() without the copy: the bytes stay in the reader's reusable
  /// buffer and are valid until the next call on this reader.
  Result<std::optional<RecordView>> next_view() {
    if (!ptr_) return detail::empty_handle("keel::WalReader");
    // The buffer starts small and grows to fit: BUFFER_TOO_SMALL reports the
    // size needed and does not advance, so the retry reads the same record.
    if (buf_.empty()) buf_.resize(4096);
    for (;;) {
      detail::ErrorOut err;
      uint64_t seq = 0;
      size_t len = 0;
      const keel_status_t st = keel_wal_reader_next(ptr_.get(), &seq, buf_.data(), buf_.size(), &len, err.out());
      if (st == KEEL_STATUS_OK) return std::optional<RecordView>(RecordView{seq, ByteView(buf_.data(), len)});
      if (st == KEEL_STATUS_NOT_FOUND) return std::optional<RecordView>();
      if (st == KEEL_STATUS_BUFFER_TOO_SMALL && len > buf_.size()) {
        buf_.resize(std::max(len, buf_.size() * 2));
        continue;
      }
      return err.take(st);
    }
  }

  explicit operator bool() const noexcept { return ptr_ != nullptr; }
  keel_wal_reader_t* raw() const noexcept { return ptr_.get(); }
  /// Gives up ownership: the caller must keel_wal_reader_close() it.
  [[nodiscard]] keel_wal_reader_t* release() noexcept { return ptr_.release(); }

 private:
  std::unique_ptr<keel_wal_reader_t, Deleter> ptr_;
  std::vector<uint8_t> buf_;  // reused across next() calls
};

// ---- WAL ----------------------------------------------------------------------

/// A write-ahead log open on one directory (owns a keel_wal_t). The
/// destructor closes it (syncing) and ignores errors; call close() to see
/// them. Const members are safe to call from many threads at once.
class Wal {
  struct Deleter {
    void operator()(keel_wal_t* w) const noexcept { (void)keel_wal_close(w, nullptr); }
  };

 public:
  /// An empty WAL: every call returns Status::Closed.
  Wal() noexcept = default;
  /// Takes ownership of a handle opened through the C API.
  explicit Wal(keel_wal_t* owned) noexcept : ptr_(owned) {}

  Wal(Wal&&) noexcept = default;
  Wal& operator=(Wal&&) noexcept = default;  // closes the WAL it replaces
  Wal(const Wal&) = delete;
  Wal& operator=(const Wal&) = delete;

  /// Opens (creating if needed) the WAL in `dir` and recovers it. The
  /// directory is locked: a second open fails with Status::Busy.
  static Result<Wal> open(const std::string& dir, const WalOptions& opts = WalOptions()) {
    // Checked once per process: the local static is shared by every TU.
    static const Result<void> abi = check_abi();
    if (!abi) return abi.err();
    // The C side sees a NUL-terminated string: an embedded NUL would
    // silently open a different directory.
    if (dir.find('\0') != std::string::npos) {
      return Error(Status::InvalidArgument, "directory path contains a NUL byte");
    }
    detail::ErrorOut err;
    keel_wal_t* w = nullptr;
    const keel_status_t st = keel_wal_open(dir.c_str(), &opts.raw(), &w, err.out());
    if (st != KEEL_STATUS_OK) return err.take(st);
    return Wal(w);
  }

  /// Appends one record; returns its sequence number. Durable on return in
  /// Durability::Sync mode.
  Result<uint64_t> append(ByteView record) const {
    if (!ptr_) return detail::empty_handle("keel::Wal");
    detail::ErrorOut err;
    uint64_t seq = 0;
    const keel_status_t st = keel_wal_append(ptr_.get(), record.data(), record.size(), &seq, err.out());
    if (st != KEEL_STATUS_OK) return err.take(st);
    return seq;
  }
  Result<uint64_t> append(const void* data, size_t size) const { return append(ByteView(data, size)); }

  /// Appends `count` records as one atomic batch (all recovered or none)
  /// with consecutive sequence numbers; returns the first. They are packed
  /// into the contiguous data + lens layout keel_wal_append_batch takes.
  Result<uint64_t> append_batch(const ByteView* records, size_t count) const {
    if (!ptr_) return detail::empty_handle("keel::Wal");
    std::vector<size_t> lens(count);
    size_t total = 0;
    for (size_t i = 0; i < count; ++i) {
      lens[i] = records[i].size();
      total += lens[i];
    }
    std::vector<uint8_t> packed;
    packed.reserve(total);
    for (size_t i = 0; i < count; ++i) {
      packed.insert(packed.end(), records[i].data(), records[i].data() + records[i].size());
    }
    detail::ErrorOut err;
    uint64_t first = 0;
    const keel_status_t st =
        keel_wal_append_batch(ptr_.get(), packed.data(), lens.data(), count, &first, err.out());
    if (st != KEEL_STATUS_OK) return err.take(st);
    return first;
  }
  /// Any range whose elements convert to ByteView: std::vector<std::string_view>,
  /// std::vector<std::string>, std::array<std::vector<uint8_t>, N>, ...
  template <class Range>
  Result<uint64_t> append_batch(const Range& records) const {
    std::vector<ByteView> views;
    for (const auto& r : records) views.emplace_back(r);
    return append_batch(views.data(), views.size());
  }
  Result<uint64_t> append_batch(std::initializer_list<std::string_view> records) const {
    return append_batch<std::initializer_list<std::string_view>>(records);
  }

  /// Makes every record appended before the call durable.
  Result<void> sync() const {
    if (!ptr_) return detail::empty_handle("keel::Wal");
    detail::ErrorOut err;
    return detail::check(keel_wal_sync(ptr_.get(), err.out()), err);
  }

  /// Durable watermark: every record <= it is on stable storage (0: none).
  Result<uint64_t> durable_seq() const { return get(keel_wal_durable_seq); }
  /// Sequence number of the last appended record (0: never held one).
  Result<uint64_t> last_seq() const { return get(keel_wal_last_seq); }
  /// First retained record (last_seq + 1 when none is retained).
  Result<uint64_t> first_seq() const { return get(keel_wal_first_seq); }

  /// Declares records <= seq persisted elsewhere; whole segments nobody
  /// needs are deleted. Status::InvalidArgument when seq > last_seq.
  Result<void> ack(uint64_t seq) const {
    if (!ptr_) return detail::empty_handle("keel::Wal");
    detail::ErrorOut err;
    return detail::check(keel_wal_ack(ptr_.get(), seq, err.out()), err);
  }

  /// Holds records >= seq back from truncation; keep_none releases the hold.
  /// Status::Truncated when seq is below first_seq.
  static constexpr uint64_t keep_none = KEEL_WAL_KEEP_NONE;
  Result<void> set_keep_from(uint64_t seq) const {
    if (!ptr_) return detail::empty_handle("keel::Wal");
    detail::ErrorOut err;
    return detail::check(keel_wal_set_keep_from(ptr_.get(), seq, err.out()), err);
  }

  /// A reader from `from` (0: the first retained record). Status::Truncated
  /// when `from` was truncated away.
  Result<WalReader> reader(uint64_t from = 0, ReadUpto upto = ReadUpto::Durable) const {
    if (!ptr_) return detail::empty_handle("keel::Wal");
    detail::ErrorOut err;
    keel_wal_reader_t* r = nullptr;
    const keel_status_t st = keel_wal_reader_open(ptr_.get(), from, static_cast<uint32_t>(upto), &r, err.out());
    if (st != KEEL_STATUS_OK) return err.take(st);
    return WalReader(r);
  }

  /// Syncs, stops background work and frees the handle; the Wal is empty
  /// afterwards even when the final sync fails (the error is returned).
  /// Closing an empty Wal succeeds.
  Result<void> close() {
    detail::ErrorOut err;
    return detail::check(keel_wal_close(ptr_.release(), err.out()), err);
  }

  explicit operator bool() const noexcept { return ptr_ != nullptr; }
  keel_wal_t* raw() const noexcept { return ptr_.get(); }
  /// Gives up ownership: the caller must keel_wal_close() it.
  [[nodiscard]] keel_wal_t* release() noexcept { return ptr_.release(); }

 private:
  Result<uint64_t> get(keel_status_t (*fn)(const keel_wal_t*, uint64_t*)) const {
    if (!ptr_) return detail::empty_handle("keel::Wal");
    uint64_t v = 0;
    const keel_status_t st = fn(ptr_.get(), &v);
    if (st != KEEL_STATUS_OK) {
      detail::ErrorOut none;  // these calls carry no error object
      return none.take(st);
    }
    return v;
  }

  std::unique_ptr<keel_wal_t, Deleter> ptr_;
};

}  // namespace keel

#endif  // KEEL_HPP
