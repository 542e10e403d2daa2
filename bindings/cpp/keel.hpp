// keel.hpp — C++17 wrapper of the keel C API (include/keel.h).
//
// Header-only: every function is inline, so any number of translation units
// may include it. Link against libkeel (shared or static) as for the C API.
//
// Style (after wasmtime's wasmtime.hh):
//   * Each C handle is owned by one move-only class deriving from
//     detail::Handle<T, Close>, which holds the std::unique_ptr and gives
//     every class the same ownership rules, written once: the destructor
//     (and a move assigned over the object) closes the handle, `raw()`
//     borrows it, `release()` gives ownership back to the caller (who must
//     then close it with the C API). A moved-from, released or closed
//     object is empty: destroying it is a no-op and every call on it
//     returns Status::Closed.
//   * Fallible calls return [[nodiscard]] keel::Result<T> (or Result<void>)
//     holding either the value or a keel::Error. No exceptions are thrown
//     unless KEEL_CPP_EXCEPTIONS is defined before including this header;
//     then Result::unwrap()/value() throw keel::Exception on error. Without
//     it they print the error to stderr and call std::abort().
//   * keel::Error copies the code and message out of keel_error_t, so it is
//     an ordinary value type; the C error object is freed immediately.
//   * Times are taken in any std::chrono unit that converts to
//     milliseconds exactly (detail::Millis); one past what milliseconds
//     can count saturates instead of overflowing into a wrapped value.
//
// Threads: keel::Wal, keel::Engine and keel::Shard are internally
// synchronised; any number of threads may call their const members on one
// shared object. Moving, close() and destruction must not race with other
// calls. keel::WalReader, keel::Iterator and keel::Batch may move between
// threads but must be used by one thread at a time (as their C handles).
//
// keel::Net, keel::Writer and keel::Publisher (batched socket writers) are
// internally synchronised too. A Net's event handler runs on keel's own
// reactor thread (see keel::EventHandler).
//
// keel::Node (keel's authenticated transport to other keel processes,
// docs/TRANSFER.md) is internally synchronised as well; its event handler
// runs on the node's own threads (see keel::NodeEventHandler).
//
// Shards: an Engine hosts Shards by id; a Shard maps each key to a value
// or a posting list (keel::Kind). Shards may outlive their Engine: once it
// is closed their calls fail with Status::Closed and destroying them is
// safe. The same holds for an Iterator and its Shard.
//
// Not wrapped (the C API has them for callers that cannot hold a handle
// per batch or per buffer, such as cgo): keel_shard_write_packed,
// keel_shard_write_packed_ex and keel_shard_apply_packed (a keel::Batch
// does the packing), keel_wal_reader_next_buf and keel_bufs_free (the
// wrapper copies into buffers it owns), keel_shard_get, keel_shard_scan
// and keel_shard_scan_prefix (their _ex forms with default ReadOptions are
// the same calls), and the first-version option initialisers
// keel_wal_options_init, keel_engine_options_init, keel_net_options_init
// and keel_writer_options_init (the option classes fill every field this
// header knows with the _init_sized forms, so a field set through raw()
// is read). The tests check that every other function of keel.h is used
// here.
#ifndef KEEL_HPP
#define KEEL_HPP

#include "keel.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <array>
#include <functional>
#include <initializer_list>
#include <iterator>
#include <limits>
#include <memory>
#include <mutex>
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
  WrongKind = KEEL_STATUS_WRONG_KIND,
  Resource = KEEL_STATUS_RESOURCE,
  Fenced = KEEL_STATUS_FENCED,
  Refused = KEEL_STATUS_REFUSED,
  Protocol = KEEL_STATUS_PROTOCOL,
  Moved = KEEL_STATUS_MOVED,
};

// A new KEEL_STATUS_* value must get an enumerator above (statuses are
// dense and never renumbered). The preprocessor cannot list the header's
// codes, so this pins the last one known here, and errors_test.cpp checks
// at run time that the library names no status after it.
static_assert(KEEL_STATUS_MOVED == 21, "keel.h has new status codes: extend keel::Status");
inline constexpr Status last_status = Status::Moved;

/// The C name of a status ("OK", "INVALID_ARGUMENT", ...); static storage.
inline const char* to_string(Status s) noexcept {
  return keel_status_str(static_cast<keel_status_t>(s));
}

/// A failed call: status code and message. A plain copyable value.
class Error {
 public:
  Error(Status code, std::string message, uint64_t leader_hint = 0)
      : code_(code), message_(std::move(message)), leader_hint_(leader_hint) {}

  Status code() const noexcept { return code_; }
  const std::string& message() const noexcept { return message_; }
  /// For Status::NotLeader: the leader's consensus id when this node knows
  /// it (keel_error_leader_hint()), never the node that refused; 0 when
  /// unknown or for other errors.
  uint64_t leader_hint() const noexcept { return leader_hint_; }
  /// "INVALID_ARGUMENT: segment_size 1024 is outside ..." for logs.
  std::string to_string() const { return std::string(keel::to_string(code_)) + ": " + message_; }

 private:
  Status code_;
  std::string message_;
  uint64_t leader_hint_;
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
    const uint64_t leader_hint = keel_error_leader_hint(ptr);
    keel_error_free(ptr);
    ptr = nullptr;
    return Error(static_cast<Status>(status), std::move(message), leader_hint);
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

  /// The value; on error throws (KEEL_CPP_EXCEPTIONS) or aborts. On a
  /// temporary Result it is moved out by value, so
  /// `for (auto e : shard.scan().value())` iterates an Iterator that
  /// lives through the loop (a reference into the temporary would not).
  T& value() & { check(); return std::get<0>(v_); }
  const T& value() const& { check(); return std::get<0>(v_); }
  T value() && { check(); return std::get<0>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T operator*() && { return std::move(*this).value(); }
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

namespace detail {
/// check_abi() once per process: the local static is shared by every TU.
inline const Result<void>& abi_once() {
  static const Result<void> abi = check_abi();
  return abi;
}

/// The static open() of the classes that own a directory (Wal, Engine):
/// checks the ABI and that the path has no NUL byte (C would see a
/// shorter, different path), calls the C `open` and wraps the handle it
/// returns in `Class`.
template <class Class, class T, class COptions>
Result<Class> open_dir(keel_status_t (*open)(const char*, const COptions*, T**, keel_error_t**),
                       const std::string& dir, const COptions& opts) {
  if (const auto& abi = abi_once(); !abi) return abi.err();
  if (dir.find('\0') != std::string::npos) {
    return Error(Status::InvalidArgument, "directory path contains a NUL byte");
  }
  ErrorOut err;
  T* handle = nullptr;
  const keel_status_t st = open(dir.c_str(), &opts, &handle, err.out());
  if (st != KEEL_STATUS_OK) return err.take(st);
  return Class(handle);
}

/// A duration argument in whole milliseconds. Every call and option setter
/// that takes a time takes it as this, and so do the time fields of
/// LeaseOptions and ReadOptions (read a field's count as `.value`), so
/// that an assignment converts the same way. Built implicitly from any
/// std::chrono::duration that converts to milliseconds without losing
/// precision (milliseconds, seconds, minutes, hours, ...). The conversion
/// saturates: a duration past what milliseconds can count becomes
/// milliseconds::max() (or min() when negative) instead of overflowing,
/// which would wrap it around to an arbitrary, possibly valid, value
/// (std::chrono::seconds::max() is -1000 ms once multiplied out).
struct Millis {
  std::chrono::milliseconds value;

  template <class Rep, class Period,
            class = std::enable_if_t<std::is_convertible_v<std::chrono::duration<Rep, Period>, std::chrono::milliseconds>>>
  constexpr Millis(std::chrono::duration<Rep, Period> d) noexcept  // NOLINT: implicit on purpose
      : value(saturate(d)) {}

 private:
  template <class Rep, class Period>
  static constexpr std::chrono::milliseconds saturate(std::chrono::duration<Rep, Period> d) noexcept {
    using ms = std::chrono::milliseconds;
    // Convertible without loss: Period is a whole number of milliseconds.
    using per_ms = std::ratio_divide<Period, std::milli>;
    static_assert(per_ms::den == 1, "a duration that converts to milliseconds exactly");
    using wide = std::common_type_t<Rep, ms::rep>;
    constexpr ms::rep limit = std::numeric_limits<ms::rep>::max() / static_cast<ms::rep>(per_ms::num);
    const Rep n = d.count();
    if (static_cast<wide>(n) > static_cast<wide>(limit)) return ms::max();
    if constexpr (std::is_signed_v<Rep>) {
      if (static_cast<wide>(n) < static_cast<wide>(-limit)) return ms::min();
    }
    return ms(static_cast<ms::rep>(n) * static_cast<ms::rep>(per_ms::num));
  }
};

/// A millisecond count as the uint32_t option fields take it. A negative
/// count, or one past UINT32_MAX (also one that saturated in Millis),
/// becomes UINT32_MAX instead of wrapping:
/// every millisecond option has an upper bound below it, so the library
/// rejects it when the options are used (0 would not do: several options
/// take 0 as a valid value or as "the default").
inline uint32_t clamp_ms(Millis ms) noexcept {
  const auto n = ms.value.count();
  return n < 0 || static_cast<unsigned long long>(n) > std::numeric_limits<uint32_t>::max()
             ? std::numeric_limits<uint32_t>::max()
             : static_cast<uint32_t>(n);
}
}  // namespace detail

// ---- bytes --------------------------------------------------------------

/// A borrowed (pointer, size) byte range: what append() takes. Built
/// implicitly from std::string_view, std::string, and contiguous vectors
/// of bytes; the caller keeps the memory alive for the call. A null
/// `const char*` is no string at all (not ""): the view remembers it and
/// every call given one returns Status::NullArgument without reading it.
class ByteView {
 public:
  constexpr ByteView() noexcept = default;
  ByteView(const void* data, size_t size) noexcept : data_(static_cast<const uint8_t*>(data)), size_(size) {}
  ByteView(std::string_view s) noexcept : ByteView(s.data(), s.size()) {}          // NOLINT
  ByteView(const std::string& s) noexcept : ByteView(s.data(), s.size()) {}        // NOLINT
  ByteView(const char* s) noexcept                                                 // NOLINT
      : data_(reinterpret_cast<const uint8_t*>(s)), size_(s ? std::char_traits<char>::length(s) : 0), null_string_(!s) {}
  ByteView(const std::vector<uint8_t>& v) noexcept : ByteView(v.data(), v.size()) {}  // NOLINT
  ByteView(const std::vector<char>& v) noexcept : ByteView(v.data(), v.size()) {}     // NOLINT

  const uint8_t* data() const noexcept { return data_; }
  size_t size() const noexcept { return size_; }
  bool empty() const noexcept { return size_ == 0; }
  /// Built from a null `const char*`.
  bool null_string() const noexcept { return null_string_; }

 private:
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  bool null_string_ = false;
};

namespace detail {
/// The error for bytes built from a null `const char*`.
inline Error null_string_error() {
  return Error(Status::NullArgument, "bytes made from a null const char* (pass \"\" for an empty string)");
}
/// Status::NullArgument when one of `views` came from a null `const char*`.
inline Result<void> check_views(std::initializer_list<ByteView> views) {
  for (const ByteView& v : views) {
    if (v.null_string()) return null_string_error();
  }
  return {};
}

/// Byte strings packed back to back plus their lengths: the form the batch
/// calls take (keel_wal_append_batch, keel_shard_multi_get,
/// keel_writer_send_batch). Each element is copied in by the expression
/// that reads it, because a range may make its elements on the fly (a
/// transform, a generator): such an element is a temporary, gone by the
/// next statement, so no view of it may be kept.
struct Packed {
  std::vector<uint8_t> bytes;
  std::vector<size_t> lens;
  bool null_string = false;  ///< an element came from a null const char*

  template <class It>
  Packed(It first, It last) {
    if constexpr (std::is_base_of_v<std::forward_iterator_tag, typename std::iterator_traits<It>::iterator_category>) {
      // A range that can be walked twice gets its sizes first, so the
      // bytes are allocated once (only sizes are kept from this pass).
      size_t count = 0, total = 0;
      for (It it = first; it != last; ++it, ++count) total += ByteView(*it).size();
      lens.reserve(count);
      bytes.reserve(total);
    }
    for (; first != last; ++first) add(*first);
  }

 private:
  void add(ByteView v) {
    null_string = null_string || v.null_string();
    lens.push_back(v.size());
    bytes.insert(bytes.end(), v.data(), v.data() + v.size());
  }
};
}  // namespace detail

// ---- options --------------------------------------------------------------

/// keel_wal_options_t.durability (see KEEL_DURABILITY_*).
enum class Durability : uint32_t {
  Sync = KEEL_DURABILITY_SYNC,          ///< append returns once durable (default)
  Periodic = KEEL_DURABILITY_PERIODIC,  ///< background sync at most sync_interval after a write
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
/// filled with the library defaults by keel_wal_options_init_sized(). Setters
/// chain; values are validated by the library when the WAL opens.
class WalOptions {
 public:
  WalOptions() noexcept { keel_wal_options_init_sized(&raw_, sizeof raw_); }  // cannot fail: valid pointer and size

  WalOptions& durability(Durability d) noexcept { raw_.durability = static_cast<uint32_t>(d); return *this; }
  /// Interval of Durability::Periodic (1 ms to 60 s). Out-of-range values
  /// are clamped to ones the library rejects instead of wrapping around.
  WalOptions& sync_interval(detail::Millis ms) noexcept {
    raw_.sync_interval_ms = detail::clamp_ms(ms);
    return *this;
  }
  WalOptions& recovery(RecoveryMode m) noexcept { raw_.recovery_mode = static_cast<uint32_t>(m); return *this; }
  /// Largest segment file, 64 KiB to 4 GiB (segments start at 64 KiB and
  /// double per rotation up to it).
  WalOptions& segment_size(uint64_t bytes) noexcept { raw_.segment_size = bytes; return *this; }
  WalOptions& max_record_size(uint64_t bytes) noexcept { raw_.max_record_size = bytes; return *this; }
  /// Open a non-empty directory that holds no keel WAL file (refused by
  /// default: a mistyped path never gets a LOCK and a segment).
  WalOptions& allow_foreign_files(bool allow) noexcept { raw_.allow_foreign_files = allow ? 1 : 0; return *this; }

  Durability durability() const noexcept { return static_cast<Durability>(raw_.durability); }
  std::chrono::milliseconds sync_interval() const noexcept { return std::chrono::milliseconds(raw_.sync_interval_ms); }
  RecoveryMode recovery() const noexcept { return static_cast<RecoveryMode>(raw_.recovery_mode); }
  uint64_t segment_size() const noexcept { return raw_.segment_size; }
  uint64_t max_record_size() const noexcept { return raw_.max_record_size; }
  bool allow_foreign_files() const noexcept { return raw_.allow_foreign_files != 0; }

  /// The C struct, for fields this wrapper does not know yet.
  keel_wal_options_t& raw() noexcept { return raw_; }
  const keel_wal_options_t& raw() const noexcept { return raw_; }

 private:
  keel_wal_options_t raw_;
};

// ---- handles ----------------------------------------------------------------

namespace detail {

// How each handle class closes its C handle when the object is destroyed or
// a move is assigned over it. The closes that return a status ignore it: a
// destructor has nowhere to report it (each class's close() returns it), so
// no error object is asked for either. noexcept, as Handle requires, because
// they run in destructors and in the noexcept move assignments.
//
// The closes passed to report_leak() do not ignore one status: BUSY, from
// a close (or free) made in a handler that it would wait for, which each
// class forbids. keel then does nothing, so the handle, its thread and its
// handler stay alive and the object forgets them: a leak, the only safe
// outcome there, which report_leak() writes on stderr (one line) so that
// it can be found.
inline void report_leak(keel_status_t st, const char* what) noexcept {
  if (st == KEEL_STATUS_BUSY) std::fprintf(stderr, "keel: %s\n", what);
}
inline void close_wal_reader(keel_wal_reader_t* r) noexcept { keel_wal_reader_close(r); }
inline void close_wal(keel_wal_t* w) noexcept { (void)keel_wal_close(w, nullptr); }
inline void close_iter(keel_iter_t* i) noexcept { keel_iter_close(i); }
inline void free_batch(keel_batch_t* b) noexcept { keel_batch_free(b); }
inline void close_shard(keel_shard_t* s) noexcept { (void)keel_shard_close(s, nullptr); }
inline void end_read_session(keel_read_session_t* s) noexcept { keel_shard_read_end(s); }
inline void close_engine(keel_engine_t* e) noexcept { (void)keel_engine_close(e, nullptr); }
inline void close_net(keel_net_t* n) noexcept {
  report_leak(keel_net_close(n, nullptr),
              "keel::Net destroyed in a net's event handler: keel cannot close it there, so the net and its "
              "reactor thread are leaked (close it from another thread)");
}
inline void close_writer(keel_writer_t* w) noexcept { (void)keel_writer_close(w, nullptr); }
inline void close_publisher(keel_publisher_t* p) noexcept { (void)keel_publisher_close(p, nullptr); }
inline void close_node(keel_node_t* n) noexcept {
  report_leak(keel_node_close(n, nullptr),
              "keel::Node destroyed in its own event handler: keel cannot close it there, so the node, its "
              "threads and its handler are leaked (close it from another thread)");
}

/// The ownership every handle class shares (WalReader, Wal, Iterator,
/// Batch, Shard, Engine, Net, Writer, Publisher, Node), written once so the
/// classes cannot drift apart: one owned `T*`, closed by `Close` when the
/// object is destroyed or a move is assigned over it. Move-only, because
/// two owners would close one handle twice. An empty object (default-made,
/// moved from, released or closed) holds nullptr; destroying it is a no-op.
///
/// A class derives publicly, so that operator bool, raw() and release()
/// are its own public API, and inherits the owning constructor with
/// `using Handle::Handle;`. Its calls check `ptr_` themselves, to answer
/// Status::Closed with the class's own name when it is empty.
template <class T, void (*Close)(T*) noexcept>
class Handle {
 public:
  Handle() noexcept = default;
  explicit Handle(T* owned) noexcept : ptr_(owned) {}

  Handle(Handle&&) noexcept = default;
  Handle& operator=(Handle&&) noexcept = default;  // closes the handle it replaces
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;

  /// Whether a handle is held.
  explicit operator bool() const noexcept { return ptr_ != nullptr; }
  /// Borrows the handle (nullptr when empty); this object still owns it.
  T* raw() const noexcept { return ptr_.get(); }
  /// Gives up ownership: the caller must close the handle with the C
  /// function its class names. The object is empty afterwards.
  [[nodiscard]] T* release() noexcept { return ptr_.release(); }

 protected:
  // Protected and not virtual: a Handle exists only as the base of its
  // class, so it cannot be made on its own, sliced out of a handle class,
  // or deleted through a Handle*.
  ~Handle() = default;

  struct Deleter {
    void operator()(T* p) const noexcept { Close(p); }
  };
  std::unique_ptr<T, Deleter> ptr_;
};

}  // namespace detail

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
class WalReader : public detail::Handle<keel_wal_reader_t, detail::close_wal_reader> {
 public:
  /// WalReader() is an empty reader. explicit WalReader(keel_wal_reader_t*
  /// owned) takes ownership of a reader opened through the C API; one
  /// given back by release() must be closed with keel_wal_reader_close().
  using Handle::Handle;

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

 private:
  std::vector<uint8_t> buf_;  // reused across next() calls
};

// ---- WAL ----------------------------------------------------------------------

/// A write-ahead log open on one directory (owns a keel_wal_t). The
/// destructor closes it (syncing) and ignores errors; call close() to see
/// them. Const members are safe to call from many threads at once.
class Wal : public detail::Handle<keel_wal_t, detail::close_wal> {
 public:
  /// Wal() is empty: every call returns Status::Closed. explicit
  /// Wal(keel_wal_t* owned) takes ownership of a handle opened through the
  /// C API; one given back by release() must be closed with keel_wal_close().
  using Handle::Handle;

  /// Opens (creating if needed) the WAL in `dir` and recovers it. The
  /// directory is locked: a second open fails with Status::Busy.
  static Result<Wal> open(const std::string& dir, const WalOptions& opts = WalOptions()) {
    return detail::open_dir<Wal>(keel_wal_open, dir, opts.raw());
  }

  /// Appends one record; returns its sequence number. Durable on return in
  /// Durability::Sync mode.
  Result<uint64_t> append(ByteView record) const {
    if (!ptr_) return detail::empty_handle("keel::Wal");
    if (auto ok = detail::check_views({record}); !ok) return ok.err();
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
    return append_packed(detail::Packed(records, records + count));
  }
  /// Any range whose elements convert to ByteView: std::vector<std::string_view>,
  /// std::vector<std::string>, std::array<std::vector<uint8_t>, N>, or one
  /// that makes its elements on the fly (each is copied as it is read).
  template <class Range>
  Result<uint64_t> append_batch(const Range& records) const {
    using std::begin;
    using std::end;
    return append_packed(detail::Packed(begin(records), end(records)));
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
  /// Last sequence number used: the last appended record's, or the end of
  /// a gap a recovery declared after it (0: never held a record).
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

 private:
  Result<uint64_t> append_packed(const detail::Packed& packed) const {
    if (!ptr_) return detail::empty_handle("keel::Wal");
    if (packed.null_string) return detail::null_string_error();
    detail::ErrorOut err;
    uint64_t first = 0;
    const keel_status_t st = keel_wal_append_batch(ptr_.get(), packed.bytes.data(), packed.lens.data(),
                                                   packed.lens.size(), &first, err.out());
    if (st != KEEL_STATUS_OK) return err.take(st);
    return first;
  }

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
};

// ---- shards: options, kinds, values -------------------------------------------

/// Longest key a shard accepts (KEEL_SHARD_MAX_KEY_SIZE); longer keys are
/// Status::InvalidArgument.
inline constexpr size_t max_key_size = KEEL_SHARD_MAX_KEY_SIZE;

/// Options of Engine::open(), applied to every shard it opens: a copyable
/// value wrapping keel_engine_options_t, filled with the library defaults
/// by keel_engine_options_init_sized(). Setters chain; values are validated by
/// the library when the engine opens.
class EngineOptions {
 public:
  EngineOptions() noexcept { keel_engine_options_init_sized(&raw_, sizeof raw_); }  // cannot fail: the pointer and size are valid

  /// When a write returns (every shard's WAL mode); default Durability::Sync.
  EngineOptions& durability(Durability d) noexcept { raw_.durability = static_cast<uint32_t>(d); return *this; }
  /// Interval of Durability::Periodic (1 ms to 60 s), clamped as WalOptions does.
  EngineOptions& sync_interval(detail::Millis ms) noexcept {
    raw_.sync_interval_ms = detail::clamp_ms(ms);
    return *this;
  }
  /// More immutable segments than this are merged in the background (>= 1).
  EngineOptions& max_sealed_segments(uint32_t n) noexcept { raw_.max_sealed_segments = n; return *this; }
  /// Largest WAL segment file, 64 KiB to 4 GiB (segments start at 64 KiB
  /// and double per rotation up to it).
  EngineOptions& wal_segment_size(uint64_t bytes) noexcept { raw_.wal_segment_size = bytes; return *this; }
  /// Period of the background flush; zero (or negative) turns it off, so
  /// shards flush only on Shard::flush(), when sealing and on close. One
  /// too long to count in milliseconds is the longest count.
  EngineOptions& flush_interval(detail::Millis ms) noexcept {
    raw_.flush_interval_ms = ms.value.count() < 0 ? 0u : static_cast<uint64_t>(ms.value.count());
    return *this;
  }
  /// The appendable segment is sealed past this many bytes (>= 4096).
  EngineOptions& seal_bytes(uint64_t bytes) noexcept { raw_.seal_bytes = bytes; return *this; }
  /// Salvage open (never the default): a shard with missing or damaged
  /// segment files opens with what is left instead of failing with
  /// Status::Corruption; Shard::salvage_report() says what is lost. It
  /// also rebuilds a lost shard list, lists again a shard directory the
  /// list lacks, and opens a damaged commit log (the copies from the
  /// damage on are lost, every listed shard's report says so, and its
  /// versions skip past what they could have held), or makes anew one
  /// whose folder is missing or empty though the engine had one (all its
  /// copies lost, reported the same way).
  EngineOptions& salvage(bool on) noexcept { raw_.salvage = on ? 1 : 0; return *this; }
  /// Worker threads of the engine's flush pool, shared by all its shards
  /// (1 to 256); 0, the default, lets the library pick (twice the cores,
  /// 2 to 8).
  EngineOptions& flush_threads(uint64_t n) noexcept { raw_.flush_threads = n; return *this; }
  /// Most bytes of WAL a shard holds that its segment files do not (what a
  /// reopen replays): past it writes wait for the flush (1 MiB to 1 TiB);
  /// 0, the default, means 64 MiB.
  EngineOptions& max_unflushed_wal_bytes(uint64_t bytes) noexcept { raw_.max_unflushed_wal_bytes = bytes; return *this; }
  /// How long a write waits for the flush at that bound before it fails
  /// with Status::Timeout (1 ms to 1 hour); zero, the default, means 5 s.
  /// A negative time is a mistake, never the default: it becomes
  /// UINT64_MAX, which the engine's open refuses (Status::InvalidArgument),
  /// as it refuses any time past an hour.
  EngineOptions& write_stall_timeout(detail::Millis ms) noexcept {
    raw_.write_stall_timeout_ms =
        ms.value.count() < 0 ? std::numeric_limits<uint64_t>::max() : static_cast<uint64_t>(ms.value.count());
    return *this;
  }
  /// Files the engine keeps open at most for all its shards (its
  /// descriptor cache closes the least recently used idle one past it);
  /// 0, the default, is half the process's soft RLIMIT_NOFILE; else >= 16.
  EngineOptions& max_open_files(uint64_t n) noexcept { raw_.max_open_files = n; return *this; }
  /// In Durability::Sync the engine makes its shards' writes durable
  /// through one commit log shared by all of them (the default);
  /// commit_log(false) has each shard sync its own WAL instead.
  EngineOptions& commit_log(bool on) noexcept { raw_.disable_commit_log = on ? 0 : 1; return *this; }

  Durability durability() const noexcept { return static_cast<Durability>(raw_.durability); }
  std::chrono::milliseconds sync_interval() const noexcept { return std::chrono::milliseconds(raw_.sync_interval_ms); }
  uint32_t max_sealed_segments() const noexcept { return raw_.max_sealed_segments; }
  uint64_t wal_segment_size() const noexcept { return raw_.wal_segment_size; }
  std::chrono::milliseconds flush_interval() const noexcept {
    return std::chrono::milliseconds(static_cast<std::chrono::milliseconds::rep>(raw_.flush_interval_ms));
  }
  uint64_t seal_bytes() const noexcept { return raw_.seal_bytes; }
  bool salvage() const noexcept { return raw_.salvage != 0; }
  uint64_t flush_threads() const noexcept { return raw_.flush_threads; }
  uint64_t max_unflushed_wal_bytes() const noexcept { return raw_.max_unflushed_wal_bytes; }
  std::chrono::milliseconds write_stall_timeout() const noexcept {
    return std::chrono::milliseconds(static_cast<std::chrono::milliseconds::rep>(raw_.write_stall_timeout_ms));
  }
  uint64_t max_open_files() const noexcept { return raw_.max_open_files; }
  bool commit_log() const noexcept { return raw_.disable_commit_log == 0; }

  /// The C struct, for fields this wrapper does not know yet.
  keel_engine_options_t& raw() noexcept { return raw_; }
  const keel_engine_options_t& raw() const noexcept { return raw_; }

 private:
  keel_engine_options_t raw_;
};

/// What a key holds (KEEL_KIND_*).
enum class Kind : uint32_t {
  None = KEEL_KIND_NONE,        ///< absent
  Value = KEEL_KIND_VALUE,      ///< a value
  Posting = KEEL_KIND_POSTING,  ///< a posting list
};

/// The items of an encoded posting list (`[u32 little-endian length][bytes]`
/// per item, as a Kind::Posting key comes back), in append order, viewing
/// into `list`: valid as long as its memory. Walks it with
/// keel_posting_next(); Status::Corruption when the encoding is damaged.
inline Result<std::vector<std::string_view>> posting_item_views(ByteView list) {
  if (auto ok = detail::check_views({list}); !ok) return ok.err();
  std::vector<std::string_view> items;
  size_t offset = 0;
  for (;;) {
    detail::ErrorOut err;
    const uint8_t* item = nullptr;
    size_t len = 0;
    const keel_status_t st = keel_posting_next(list.data(), list.size(), &offset, &item, &len, err.out());
    if (st == KEEL_STATUS_NOT_FOUND) return {std::move(items)};
    if (st != KEEL_STATUS_OK) return err.take(st);
    items.emplace_back(reinterpret_cast<const char*>(item), len);
  }
}

/// The views would point into a string or vector destroyed at the end of
/// the statement: call posting_items() for copies, or hold the bytes in a
/// variable first.
Result<std::vector<std::string_view>> posting_item_views(std::string&&) = delete;
Result<std::vector<std::string_view>> posting_item_views(std::vector<uint8_t>&&) = delete;
Result<std::vector<std::string_view>> posting_item_views(std::vector<char>&&) = delete;

/// As posting_item_views(), each item copied into its own string.
inline Result<std::vector<std::string>> posting_items(ByteView list) {
  auto views = posting_item_views(list);
  if (!views) return views.err();
  return std::vector<std::string>(views->begin(), views->end());
}

/// What a key holds, owned: its kind, the version of its last write, and
/// its bytes (a value, or an encoded posting list: see items()).
struct Value {
  Kind kind = Kind::None;
  uint64_t version = 0;
  std::vector<uint8_t> bytes;

  bool is_value() const noexcept { return kind == Kind::Value; }
  bool is_posting() const noexcept { return kind == Kind::Posting; }
  /// The raw bytes (for a posting list: its encoding).
  std::string_view view() const noexcept {
    return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
  }
  std::string str() const { return std::string(view()); }

  /// The items of a posting list, in append order. Status::WrongKind when
  /// this is not a posting list, Status::Corruption for a damaged encoding.
  Result<std::vector<std::string>> items() const {
    if (!is_posting()) return not_posting();
    return posting_items(bytes);
  }
  /// As items(), viewing into `bytes`: valid while this Value is alive and
  /// unchanged. Not on a temporary Value (its views would dangle at the end
  /// of the statement): hold it in a variable, or call items().
  Result<std::vector<std::string_view>> item_views() const& {
    if (!is_posting()) return not_posting();
    return posting_item_views(bytes);
  }
  Result<std::vector<std::string_view>> item_views() const&& = delete;

 private:
  Error not_posting() const {
    return Error(Status::WrongKind, kind == Kind::Value ? "the key holds a value, not a posting list"
                                                        : "the key is absent, not a posting list");
  }
};

/// One key of a scan, owned.
struct Entry {
  std::vector<uint8_t> key;
  Value value;

  std::string_view key_view() const noexcept {
    return {reinterpret_cast<const char*>(key.data()), key.size()};
  }
  std::string key_str() const { return std::string(key_view()); }
};

/// One key of a scan borrowed from its Iterator: valid until the next call
/// on that iterator (or its destruction).
struct EntryView {
  ByteView key;
  Kind kind = Kind::None;
  uint64_t version = 0;
  ByteView bytes;  ///< the value, or the encoded posting list

  std::string_view key_view() const noexcept {
    return {reinterpret_cast<const char*>(key.data()), key.size()};
  }
  std::string_view view() const noexcept {
    return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
  }
  /// The items of a posting list (viewing into the iterator's memory).
  Result<std::vector<std::string_view>> item_views() const {
    if (kind != Kind::Posting) return Error(Status::WrongKind, "the key holds a value, not a posting list");
    return posting_item_views(bytes);
  }
  /// A copy that outlives the iterator.
  Entry to_owned() const {
    return Entry{std::vector<uint8_t>(key.data(), key.data() + key.size()),
                 Value{kind, version, std::vector<uint8_t>(bytes.data(), bytes.data() + bytes.size())}};
  }
};

namespace detail {
/// Owns keel_buf_t objects keel filled; frees them with keel_buf_free().
struct Bufs {
  std::vector<keel_buf_t> bufs;
  explicit Bufs(size_t n) : bufs(n, keel_buf_t{nullptr, 0}) {}
  Bufs(const Bufs&) = delete;
  Bufs& operator=(const Bufs&) = delete;
  ~Bufs() {
    for (auto& b : bufs) keel_buf_free(&b);
  }
  std::vector<uint8_t> bytes(size_t i) const {
    const keel_buf_t& b = bufs[i];
    return b.len ? std::vector<uint8_t>(b.ptr, b.ptr + b.len) : std::vector<uint8_t>();
  }
};

}  // namespace detail

// ---- scans ----------------------------------------------------------------------

/// A scan over a range of keys in key order (owns a keel_iter_t, closed by
/// the destructor). Made by Shard::scan() and Shard::scan_prefix(); it
/// reads a consistent copy of the range taken when it was opened. After its
/// shard is closed, calls fail with Status::Closed. One thread at a time.
///
///   for (const auto& e : *it) {          // e is a Result<EntryView>
///     if (!e) return e.err();            // an error ends the loop
///     use(e->key_view(), e->view());
///   }
class Iterator : public detail::Handle<keel_iter_t, detail::close_iter> {
 public:
  /// Iterator() is empty: every call returns Status::Closed. explicit
  /// Iterator(keel_iter_t* owned) takes ownership of an iterator opened
  /// through the C API; one given back by release() must be closed with
  /// keel_iter_close().
  using Handle::Handle;

  /// The next key, borrowed (valid until the next call on this iterator);
  /// std::nullopt at the end.
  Result<std::optional<EntryView>> next_view() {
    if (!ptr_) return detail::empty_handle("keel::Iterator");
    detail::ErrorOut err;
    const uint8_t* key = nullptr;
    const uint8_t* bytes = nullptr;
    size_t key_len = 0, len = 0;
    uint32_t kind = KEEL_KIND_NONE;
    uint64_t version = 0;
    const keel_status_t st = keel_iter_next(ptr_.get(), &key, &key_len, &bytes, &len, &kind, &version, err.out());
    if (st == KEEL_STATUS_NOT_FOUND) return std::optional<EntryView>();
    if (st != KEEL_STATUS_OK) return err.take(st);
    return std::optional<EntryView>(EntryView{ByteView(key, key_len), static_cast<Kind>(kind), version, ByteView(bytes, len)});
  }

  /// The next key, copied out; std::nullopt at the end.
  Result<std::optional<Entry>> next() {
    auto v = next_view();
    if (!v) return v.err();
    if (!v->has_value()) return std::optional<Entry>();
    return std::optional<Entry>((*v)->to_owned());
  }

  /// Input iterator over the remaining keys (see the class comment). Each
  /// element is a Result<EntryView> borrowed until the next increment; an
  /// error is yielded once and ends the walk.
  class Cursor {
   public:
    using iterator_category = std::input_iterator_tag;
    using value_type = Result<EntryView>;
    using difference_type = std::ptrdiff_t;
    using pointer = const value_type*;
    using reference = const value_type&;

    /// The end.
    Cursor() noexcept = default;
    reference operator*() const { return *current_; }
    pointer operator->() const { return &*current_; }
    Cursor& operator++() {
      advance();
      return *this;
    }
    friend bool operator==(const Cursor& a, const Cursor& b) noexcept { return a.owner_ == b.owner_; }
    friend bool operator!=(const Cursor& a, const Cursor& b) noexcept { return a.owner_ != b.owner_; }

   private:
    friend class Iterator;
    explicit Cursor(Iterator* owner) : owner_(owner) { advance(); }
    void advance() {
      if (!owner_) return;
      if (current_ && !current_->ok()) return finish();  // the error was the last element
      auto r = owner_->next_view();
      if (!r) {
        current_.emplace(r.err());
      } else if (!r->has_value()) {
        finish();
      } else {
        current_.emplace(**r);
      }
    }
    void finish() noexcept {
      owner_ = nullptr;
      current_.reset();
    }
    Iterator* owner_ = nullptr;
    std::optional<Result<EntryView>> current_;
  };

  /// Starts reading: the first key is fetched here.
  Cursor begin() { return Cursor(this); }
  Cursor end() noexcept { return Cursor(); }
};

// ---- batches ---------------------------------------------------------------------

/// Operations that Shard::write() applies atomically (owns a keel_batch_t;
/// the bytes are copied in). Adding chains:
///
///   keel::Batch b;
///   b.put("k", "v").append("tags/x", "k").del("old");
///   auto versions = shard.write(b);
///
/// An operation that cannot be added (a key longer than max_key_size) is
/// not added, and neither is any later one: the first error is kept, and
/// status() and Shard::write() return it (write() then writes nothing).
/// clear() empties the batch and forgets the error. A moved-from or
/// released Batch is empty: status() and the calls return Status::Closed.
/// One thread at a time.
class Batch : public detail::Handle<keel_batch_t, detail::free_batch> {
 public:
  /// A new, empty batch.
  Batch() noexcept {
    keel_batch_t* b = nullptr;
    if (keel_batch_new(&b) == KEEL_STATUS_OK) ptr_.reset(b);  // cannot fail: the pointer is valid
  }
  /// explicit Batch(keel_batch_t* owned) takes ownership of a batch made
  /// through the C API; one given back by release() must be freed with
  /// keel_batch_free().
  using Handle::Handle;

  /// Adds a put of `value` under `key`.
  Batch& put(ByteView key, ByteView value) {
    return add({key, value}, [&](keel_error_t** err) {
      return keel_batch_put(ptr_.get(), key.data(), key.size(), value.data(), value.size(), err);
    });
  }
  /// Adds a delete of `key`.
  Batch& del(ByteView key) {
    return add({key}, [&](keel_error_t** err) { return keel_batch_delete(ptr_.get(), key.data(), key.size(), err); });
  }
  /// Adds an append of `item` to the posting list of `key`.
  Batch& append(ByteView key, ByteView item) {
    return add({key, item}, [&](keel_error_t** err) {
      return keel_batch_append(ptr_.get(), key.data(), key.size(), item.data(), item.size(), err);
    });
  }

  /// Number of operations added.
  Result<size_t> count() const {
    if (!ptr_) return detail::empty_handle("keel::Batch");
    size_t n = 0;
    const keel_status_t st = keel_batch_count(ptr_.get(), &n);
    if (st != KEEL_STATUS_OK) {
      detail::ErrorOut none;  // this call carries no error object
      return none.take(st);
    }
    return n;
  }

  /// Removes every operation and forgets a kept error; the memory is reused.
  Result<void> clear() {
    if (!ptr_) return detail::empty_handle("keel::Batch");
    error_.reset();
    detail::ErrorOut none;  // this call carries no error object
    return detail::check(keel_batch_clear(ptr_.get()), none);
  }

  /// The first error of an operation that could not be added, if any.
  Result<void> status() const {
    if (!ptr_) return detail::empty_handle("keel::Batch");
    if (error_) return *error_;
    return {};
  }

 private:
  template <class F>
  Batch& add(std::initializer_list<ByteView> views, F&& call) {
    if (error_) return *this;
    if (!ptr_) {
      error_ = detail::empty_handle("keel::Batch");
      return *this;
    }
    if (auto ok = detail::check_views(views); !ok) {
      error_ = ok.err();
      return *this;
    }
    detail::ErrorOut err;
    const keel_status_t st = call(err.out());
    if (st != KEEL_STATUS_OK) error_ = err.take(st);
    return *this;
  }

  std::optional<Error> error_;
};

// ---- lease reads ------------------------------------------------------------------

/// The consistency of a read (KEEL_READ_*); docs/LEASE.md.
enum class ReadLevel : uint32_t {
  Default = KEEL_READ_DEFAULT,            ///< the shard's LeaseOptions::default_level
  Stale = KEEL_READ_STALE,                ///< local state, no checks
  Lease = KEEL_READ_LEASE,                ///< the leader's lease, else a read-index
  Linearizable = KEEL_READ_LINEARIZABLE,  ///< always a read-index
};

/// This node's role in the shard's consensus group (KEEL_ROLE_*).
enum class Role : uint32_t { Follower = KEEL_ROLE_FOLLOWER, Leader = KEEL_ROLE_LEADER };

/// A read session (owns a keel_read_session_t; Shard::read_begin()): reads
/// that name it in ReadOptions see at least the state at its start without
/// a check of their own. End it (destroy it) before closing its shard.
class ReadSession : public detail::Handle<keel_read_session_t, detail::end_read_session> {
 public:
  ReadSession() noexcept = default;
  ReadSession(keel_read_session_t* owned, uint64_t index) noexcept : Handle(owned), index_(index) {}
  // The index moves with the handle: a moved-from session is empty and
  // says 0, as a default-made one does.
  ReadSession(ReadSession&& o) noexcept : Handle(std::move(o)), index_(std::exchange(o.index_, 0)) {}
  ReadSession& operator=(ReadSession&& o) noexcept {
    Handle::operator=(std::move(o));
    index_ = std::exchange(o.index_, 0);
    return *this;
  }
  /// The index the session waited for (0: a stale session of a shard
  /// without consensus, or no session held).
  uint64_t index() const noexcept { return index_; }

 private:
  uint64_t index_ = 0;
};

/// Options of a read (keel_read_options_t). The defaults read at the
/// shard's default level and timeout.
struct ReadOptions {
  ReadLevel level = ReadLevel::Default;
  /// Bound on the wait for a read-index and for the applied index; 0: the
  /// shard's LeaseOptions::read_timeout. A negative value is a budget
  /// already spent: the shortest bound (1 ms), never the shard's default.
  /// A read that makes the host's read-index call itself waits for it to
  /// return (keel cannot interrupt it): the callback bounds its own round
  /// trip.
  detail::Millis timeout{std::chrono::milliseconds(0)};
  /// A session of the same shard, or nullptr; with one, level and timeout
  /// are ignored.
  const ReadSession* session = nullptr;

  ReadOptions() = default;
  ReadOptions(ReadLevel l, detail::Millis t = std::chrono::milliseconds(0)) : level(l), timeout(t) {}  // NOLINT: implicit on purpose
  ReadOptions(const ReadSession& s) : session(&s) {}  // NOLINT: implicit on purpose
  /// A temporary session would end before the read: hold it in a variable.
  ReadOptions(const ReadSession&&) = delete;

  /// Whether the options name a session that holds no handle (moved from,
  /// released or ended). Reads answer Status::Closed for it: passed on
  /// as no session, the read would quietly run at `level` instead.
  bool names_ended_session() const noexcept { return session != nullptr && !*session; }

  keel_read_options_t to_c() const noexcept {
    keel_read_options_t o{};
    (void)keel_read_options_init_sized(&o, sizeof o);
    o.level = static_cast<uint32_t>(level);
    const auto ms = timeout.value.count();
    o.timeout_ms = ms > 0 ? static_cast<uint64_t>(ms) : ms < 0 ? 1 : 0;
    o.session = session ? session->raw() : nullptr;
    return o;
  }
};

/// A fencing token for a bucket, carried by a write (docs/LEASE.md,
/// "Fenced writes"): refused with Status::Fenced when `token` is below the
/// highest token the shard accepted for `bucket`, which otherwise becomes
/// it. A Fence owns a copy of its bucket: it is a value that is built once
/// and then kept (in WriteOptions, a member, a queue of writes), so a view
/// of the caller's bytes would dangle as soon as those were a temporary.
struct Fence {
  std::string bucket;
  uint64_t token = 0;

  Fence() = default;
  /// Copies the bucket's bytes. One made from a null `const char*` is no
  /// bucket at all (not ""): writes with it answer Status::NullArgument.
  Fence(ByteView bucket_bytes, uint64_t fence_token)
      : bucket(bucket_bytes.empty() ? std::string()
                                    : std::string(reinterpret_cast<const char*>(bucket_bytes.data()), bucket_bytes.size())),
        token(fence_token),
        null_bucket_(bucket_bytes.null_string()) {}

  /// Built from a null `const char*`.
  bool null_bucket() const noexcept { return null_bucket_; }

 private:
  bool null_bucket_ = false;
};

/// Options of Shard::write() and Shard::apply() (keel_write_options_t).
struct WriteOptions {
  std::optional<Fence> fence;  ///< none by default

  WriteOptions() = default;
  WriteOptions(Fence f) : fence(std::move(f)) {}  // NOLINT: implicit on purpose

  /// Points into this object's Fence: valid while it lives unchanged.
  keel_write_options_t to_c() const noexcept {
    keel_write_options_t o{};
    (void)keel_write_options_init_sized(&o, sizeof o);
    if (fence) {
      o.fenced = 1;
      o.fence_bucket = reinterpret_cast<const uint8_t*>(fence->bucket.data());
      o.fence_bucket_len = fence->bucket.size();
      o.fence_token = fence->token;
    }
    return o;
  }
};

/// What Shard::apply() did with an entry (keel_apply_result_t).
struct ApplyResult {
  /// Status::Ok when the entry's operations took effect (or it had none);
  /// otherwise why they were refused, the same on every replica
  /// (Status::Fenced, Status::WrongKind, Status::InvalidArgument). The
  /// index moved either way: answer the entry's client, never retry it.
  Status status = Status::Ok;
  /// The index was at or below the applied index: nothing was done.
  bool duplicate = false;
  uint32_t op_count = 0;  ///< operations that took effect
  uint64_t first_version = 0, last_version = 0;  ///< theirs, 0 when none
  uint64_t applied_index = 0;  ///< the shard's, after the call
  bool refused() const noexcept { return status != Status::Ok; }
};

/// The host's read-index round trip: the index to wait for, or an Error
/// (Status::NotLeader, Status::Timeout, ...; only its code reaches the
/// read). Runs on a reading thread and must not read from the same shard.
/// It must not throw (with KEEL_CPP_EXCEPTIONS, return the Error instead
/// of calling value() on it): the bridge is noexcept, so an escaping
/// exception calls std::terminate rather than unwinding through keel.
using ReadIndexFn = std::function<Result<uint64_t>()>;

/// Options of Shard::configure_consensus() (keel_lease_options_t). The
/// lease must be shorter than election_timeout_min - max_clock_drift -
/// max_round_trip; a configuration that is not is refused.
struct LeaseOptions {
  uint64_t self_id = 0;  ///< this node's consensus id, non-zero
  // Times as detail::Millis: one past what milliseconds can count
  // saturates (and is refused) instead of wrapping to a margin that would
  // let a lease through.
  detail::Millis lease{std::chrono::milliseconds(0)};
  detail::Millis election_timeout_min{std::chrono::milliseconds(0)};
  detail::Millis max_clock_drift{std::chrono::milliseconds(0)};
  detail::Millis max_round_trip{std::chrono::milliseconds(0)};
  detail::Millis read_timeout{std::chrono::milliseconds(5000)};  ///< of reads that name none; 0 is refused
  ReadLevel default_level = ReadLevel::Stale;    ///< of reads that name none
  /// The clock is the value set with Shard::consensus_set_clock() (tests,
  /// simulations) instead of CLOCK_MONOTONIC.
  bool manual_clock = false;
  ReadIndexFn read_index;  ///< required
  /// keel reads CLOCK_BOOTTIME instead of CLOCK_MONOTONIC: it counts the
  /// time the machine was suspended, so a suspend ages the lease
  /// (docs/LEASE.md, "The clock"). Not with manual_clock.
  bool boottime_clock = false;
};

/// A shard's lease facts and counters (keel_lease_stats_t).
struct LeaseStats {
  Role role = Role::Follower;
  uint64_t term = 0;
  uint64_t leader_id = 0;  ///< 0: unknown
  uint64_t applied_index = 0;
  uint64_t lease_hits = 0;
  uint64_t miss_not_leader = 0, miss_ack_stale = 0, miss_ack_missing = 0, miss_ack_future = 0;
  uint64_t miss_transfer = 0, miss_term_not_applied = 0, miss_clock = 0;
  uint64_t read_index_calls = 0, read_index_errors = 0;
  uint64_t read_index_latency_ns_total = 0, read_index_latency_ns_max = 0;
  uint64_t read_index_timeouts = 0;
  uint64_t acks_ignored_not_leader = 0, acks_ignored_other_term = 0, acks_ignored_not_voter = 0,
           acks_ignored_bad_time = 0;
};

namespace detail {
/// The C side of a ReadIndexFn, which keel owns once configured (deleted
/// through read_index_free at the shard's close).
inline keel_status_t read_index_call(void* user, uint64_t* index) noexcept {
  Result<uint64_t> r = (*static_cast<const ReadIndexFn*>(user))();
  // An error that says Ok is still a failure: no index was produced.
  if (!r) return r.err().code() == Status::Ok ? KEEL_STATUS_INVALID_ARGUMENT : static_cast<keel_status_t>(r.err().code());
  *index = *r;
  return KEEL_STATUS_OK;
}
inline void read_index_free(void* user) noexcept { delete static_cast<ReadIndexFn*>(user); }
}  // namespace detail

// ---- shard ------------------------------------------------------------------------

/// One shard of an Engine (owns a keel_shard_t): keys map to a value or a
/// posting list. Every write returns its version (the WAL sequence number;
/// a batch gets consecutive ones) once it is as durable as the engine's
/// Durability says. The destructor closes the shard (a final flush) and
/// ignores errors; call close() to see them. Const members are safe to
/// call from many threads at once.
/// Counters of a shard, one consistent reading (keel_shard_stats_t).
struct ShardStats {
  uint32_t sealed_segments = 0;     ///< immutable segments (tables)
  uint64_t appendable_keys = 0;     ///< keys in the appendable segment
  uint64_t appendable_bytes = 0;    ///< key and value bytes in the appendable segment
  uint64_t sealed_bytes = 0;        ///< bytes of the tables' files
  uint64_t last_version = 0;        ///< version of the last applied operation
  uint64_t persisted_version = 0;   ///< as Shard::persisted_version()
  uint64_t wal_first_version = 0;   ///< first version the shard's WAL still holds
  uint64_t unflushed_wal_bytes = 0; ///< WAL bytes no segment file holds yet (what a reopen replays)
  uint64_t write_stalls = 0;        ///< writes that waited for the flush at max_unflushed_wal_bytes
  std::chrono::nanoseconds write_stall_time{0};  ///< total time those writes waited
  uint64_t replayed_records = 0;    ///< operations the shard's open replayed from its WAL
  uint64_t replayed_bytes = 0;      ///< their bytes (each with its 4-byte record header)
};

class Shard : public detail::Handle<keel_shard_t, detail::close_shard> {
 public:
  /// Shard() is empty: every call returns Status::Closed. explicit
  /// Shard(keel_shard_t* owned) takes ownership of a handle opened through
  /// the C API; one given back by release() must be closed with
  /// keel_shard_close().
  using Handle::Handle;

  /// Puts `value` under `key`, replacing a value or a posting list.
  Result<uint64_t> put(ByteView key, ByteView value) const {
    if (auto ok = detail::check_views({key, value}); !ok) return ok.err();
    return write_one([&](uint64_t* v, keel_error_t** err) {
      return keel_shard_put(ptr_.get(), key.data(), key.size(), value.data(), value.size(), v, err);
    });
  }
  /// Deletes `key`; deleting an absent key still gets a version.
  Result<uint64_t> del(ByteView key) const {
    if (auto ok = detail::check_views({key}); !ok) return ok.err();
    return write_one([&](uint64_t* v, keel_error_t** err) {
      return keel_shard_delete(ptr_.get(), key.data(), key.size(), v, err);
    });
  }
  /// Appends `item` to the posting list of `key` (created when absent).
  /// Status::WrongKind when the key holds a value (nothing is written).
  Result<uint64_t> append(ByteView key, ByteView item) const {
    if (auto ok = detail::check_views({key, item}); !ok) return ok.err();
    return write_one([&](uint64_t* v, keel_error_t** err) {
      return keel_shard_append(ptr_.get(), key.data(), key.size(), item.data(), item.size(), v, err);
    });
  }

  /// Applies the batch atomically; returns the versions of its first and
  /// last operation (consecutive). A Status::WrongKind anywhere fails it
  /// all (earlier operations of the batch count); an empty batch is
  /// Status::InvalidArgument. The batch is left as it was.
  Result<std::pair<uint64_t, uint64_t>> write(const Batch& batch) const {
    if (!ptr_) return detail::empty_handle("keel::Shard");
    if (auto st = batch.status(); !st) return st.err();
    detail::ErrorOut err;
    uint64_t first = 0, last = 0;
    const keel_status_t st = keel_shard_write(ptr_.get(), batch.raw(), &first, &last, err.out());
    if (st != KEEL_STATUS_OK) return err.take(st);
    return std::make_pair(first, last);
  }

  /// write() with options: with a fence, Status::Fenced (nothing written)
  /// when its token is below the highest this shard accepted for its
  /// bucket; otherwise the token becomes the highest, kept across reopens.
  Result<std::pair<uint64_t, uint64_t>> write(const Batch& batch, const WriteOptions& opts) const {
    if (!ptr_) return detail::empty_handle("keel::Shard");
    if (auto st = batch.status(); !st) return st.err();
    if (opts.fence && opts.fence->null_bucket()) return detail::null_string_error();
    detail::ErrorOut err;
    uint64_t first = 0, last = 0;
    const keel_write_options_t o = opts.to_c();
    const keel_status_t st = keel_shard_write_ex(ptr_.get(), batch.raw(), &o, &first, &last, err.out());
    if (st != KEEL_STATUS_OK) return err.take(st);
    return std::make_pair(first, last);
  }

  /// Applies the host's committed entry `index` (its consensus log index,
  /// from 1) with the operations of `batch` (nullptr or empty: the entry
  /// only moves the index) and the fence of `opts`, atomically, in the
  /// shard's write order; the index is logged with them and
  /// applied_index() returns it from then on, across crashes and reopens.
  /// An index at or below it changes nothing (ApplyResult::duplicate); a
  /// refusal moves the index (ApplyResult::status). An Error means the
  /// index did not move. Apply one entry at a time, in index order.
  Result<ApplyResult> apply(uint64_t index, const Batch* batch = nullptr, const WriteOptions& opts = WriteOptions()) const {
    if (!ptr_) return detail::empty_handle("keel::Shard");
    if (batch) {
      if (auto st = batch->status(); !st) return st.err();
    }
    if (opts.fence && opts.fence->null_bucket()) return detail::null_string_error();
    detail::ErrorOut err;
    keel_apply_result_t r{};
    r.struct_size = sizeof r;
    const keel_write_options_t o = opts.to_c();
    const keel_status_t st = keel_shard_apply(ptr_.get(), index, batch ? batch->raw() : nullptr, &o, &r, err.out());
    if (st != KEEL_STATUS_OK) return err.take(st);
    ApplyResult out;
    out.status = static_cast<Status>(r.status);
    out.duplicate = r.duplicate != 0;
    out.op_count = r.op_count;
    out.first_version = r.first_version;
    out.last_version = r.last_version;
    out.applied_index = r.applied_index;
    return out;
  }
  Result<ApplyResult> apply(uint64_t index, const Batch& batch, const WriteOptions& opts = WriteOptions()) const {
    return apply(index, &batch, opts);
  }

  /// The index of the last entry applied with apply() (0: none), as it
  /// stands after any crash and reopen: where the host's consensus engine
  /// resumes (etcd raft: Config.Applied).
  Result<uint64_t> applied_index() const {
    uint64_t i = 0;
    auto r = run_call([&](keel_error_t** e) { return keel_shard_applied_index(ptr_.get(), &i, e); });
    if (!r) return r.err();
    return i;
  }

  /// What `key` holds; std::nullopt when it is absent. At the level of
  /// `opts` (by default the shard's default level, stale unless
  /// configured): Status::NotLeader (Error::leader_hint()),
  /// Status::Timeout and the read-index's errors come from there.
  Result<std::optional<Value>> get(ByteView key, const ReadOptions& opts = ReadOptions()) const {
    if (!ptr_) return detail::empty_handle("keel::Shard");
    if (auto ok = detail::check_views({key}); !ok) return ok.err();
    detail::ErrorOut err;
    detail::Bufs buf(1);
    uint32_t kind = KEEL_KIND_NONE;
    uint64_t version = 0;
    if (opts.names_ended_session()) return detail::empty_handle("keel::ReadSession");
    const keel_read_options_t o = opts.to_c();
    const keel_status_t st =
        keel_shard_get_ex(ptr_.get(), &o, key.data(), key.size(), &buf.bufs[0], &kind, &version, err.out());
    if (st == KEEL_STATUS_NOT_FOUND) return std::optional<Value>();
    if (st != KEEL_STATUS_OK) return err.take(st);
    return std::optional<Value>(Value{static_cast<Kind>(kind), version, buf.bytes(0)});
  }

  /// Reads several keys from one consistent state; element i is what key
  /// i holds, std::nullopt when absent. One lease check or read-index for
  /// all of them.
  Result<std::vector<std::optional<Value>>> multi_get(const ByteView* keys, size_t n,
                                                      const ReadOptions& opts = ReadOptions()) const {
    return multi_get_packed(detail::Packed(keys, keys + n), opts);
  }
  /// Any range whose elements convert to ByteView, also one that makes its
  /// elements on the fly (each is copied as it is read).
  template <class Range>
  Result<std::vector<std::optional<Value>>> multi_get(const Range& keys, const ReadOptions& opts = ReadOptions()) const {
    using std::begin;
    using std::end;
    return multi_get_packed(detail::Packed(begin(keys), end(keys)), opts);
  }
  Result<std::vector<std::optional<Value>>> multi_get(std::initializer_list<std::string_view> keys,
                                                      const ReadOptions& opts = ReadOptions()) const {
    return multi_get<std::initializer_list<std::string_view>>(keys, opts);
  }

  /// Keys in [start, end) in key (byte) order; no `end` means no upper
  /// bound, an empty `start` the first key. A bound longer than
  /// max_key_size is Status::InvalidArgument, as a key is to get().
  Result<Iterator> scan(ByteView start = ByteView(), std::optional<ByteView> end = std::nullopt,
                        const ReadOptions& opts = ReadOptions()) const {
    if (!ptr_) return detail::empty_handle("keel::Shard");
    if (auto ok = detail::check_views({start, end.value_or(ByteView())}); !ok) return ok.err();
    // C reads a NULL end as "no bound": an empty end must still point somewhere.
    static const uint8_t nothing = 0;
    const uint8_t* end_ptr = nullptr;
    size_t end_len = 0;
    if (end) {
      end_ptr = end->data() ? end->data() : &nothing;
      end_len = end->size();
    }
    detail::ErrorOut err;
    keel_iter_t* it = nullptr;
    if (opts.names_ended_session()) return detail::empty_handle("keel::ReadSession");
    const keel_read_options_t o = opts.to_c();
    const keel_status_t st =
        keel_shard_scan_ex(ptr_.get(), &o, start.data(), start.size(), end_ptr, end_len, &it, err.out());
    if (st != KEEL_STATUS_OK) return err.take(st);
    return Iterator(it);
  }

  /// Every key starting with `prefix` (every key when it is empty); a
  /// prefix longer than max_key_size is Status::InvalidArgument.
  Result<Iterator> scan_prefix(ByteView prefix, const ReadOptions& opts = ReadOptions()) const {
    if (!ptr_) return detail::empty_handle("keel::Shard");
    if (auto ok = detail::check_views({prefix}); !ok) return ok.err();
    detail::ErrorOut err;
    keel_iter_t* it = nullptr;
    if (opts.names_ended_session()) return detail::empty_handle("keel::ReadSession");
    const keel_read_options_t o = opts.to_c();
    const keel_status_t st = keel_shard_scan_prefix_ex(ptr_.get(), &o, prefix.data(), prefix.size(), &it, err.out());
    if (st != KEEL_STATUS_OK) return err.take(st);
    return Iterator(it);
  }

  /// Runs a flush pass. With `wait`, returns once it is done with the
  /// persisted version; without, at once with the version persisted so far.
  Result<uint64_t> flush(bool wait = true) const {
    if (!ptr_) return detail::empty_handle("keel::Shard");
    detail::ErrorOut err;
    uint64_t persisted = 0;
    const keel_status_t st = keel_shard_flush(ptr_.get(), wait, &persisted, err.out());
    if (st != KEEL_STATUS_OK) return err.take(st);
    return persisted;
  }

  /// Every operation with a version <= this is in durable segment files.
  Result<uint64_t> persisted_version() const { return get_u64(keel_shard_persisted_version); }
  /// Version of the last applied operation (0: none yet).
  Result<uint64_t> last_version() const { return get_u64(keel_shard_last_version); }

  /// What the shard's open found, one finding per line (empty when
  /// nothing): files moved aside because the manifest does not list them
  /// and, after a salvage open, the files and versions lost, and the
  /// copies of its writes the engine's commit log lost.
  Result<std::string> salvage_report() const {
    if (!ptr_) return detail::empty_handle("keel::Shard");
    detail::ErrorOut err;
    keel_buf_t buf{nullptr, 0};
    const keel_status_t st = keel_shard_salvage_report(ptr_.get(), &buf, err.out());
    if (st != KEEL_STATUS_OK) return err.take(st);
    std::string text(buf.ptr ? reinterpret_cast<const char*>(buf.ptr) : "", buf.len);
    keel_buf_free(&buf);
    return text;
  }

  /// Keeps the WAL records with version >= `version` even once persisted;
  /// keep_none releases the hold. Status::Truncated when already gone.
  static constexpr uint64_t keep_none = KEEL_WAL_KEEP_NONE;
  Result<void> set_keep_from(uint64_t version) const {
    if (!ptr_) return detail::empty_handle("keel::Shard");
    detail::ErrorOut err;
    return detail::check(keel_shard_set_keep_from(ptr_.get(), version, err.out()), err);
  }

  /// The shard's counters (keel_shard_stats()).
  Result<ShardStats> stats() const {
    if (!ptr_) return detail::empty_handle("keel::Shard");
    keel_shard_stats_t s{};
    s.struct_size = static_cast<uint32_t>(sizeof s);
    const keel_status_t st = keel_shard_stats(ptr_.get(), &s);
    if (st != KEEL_STATUS_OK) {
      detail::ErrorOut none;  // this call carries no error object
      return none.take(st);
    }
    ShardStats o;
    o.sealed_segments = s.sealed_segments;
    o.appendable_keys = s.appendable_keys;
    o.appendable_bytes = s.appendable_bytes;
    o.sealed_bytes = s.sealed_bytes;
    o.last_version = s.last_version;
    o.persisted_version = s.persisted_version;
    o.wal_first_version = s.wal_first_version;
    o.unflushed_wal_bytes = s.unflushed_wal_bytes;
    o.write_stalls = s.write_stalls;
    o.write_stall_time = std::chrono::nanoseconds(static_cast<std::chrono::nanoseconds::rep>(s.write_stall_nanos));
    o.replayed_records = s.replayed_records;
    o.replayed_bytes = s.replayed_bytes;
    return o;
  }

  /// The background work's health (keel_shard_health()): success when the
  /// last flush pass and the sealing and merging after it succeeded; else
  /// the last failure (Status::Io or Status::NoSpace: retried at the next
  /// pass, the WAL keeps every write meanwhile; Status::Panic: poisoned).
  /// A pass that succeeds clears a failed pass's status before a waiting
  /// flush() returns; a failed seal or merge stays until one succeeds.
  Result<void> health() const {
    if (!ptr_) return detail::empty_handle("keel::Shard");
    detail::ErrorOut err;
    return detail::check(keel_shard_health(ptr_.get(), err.out()), err);
  }

  // ---- lease reads (docs/LEASE.md) ----

  /// Turns on lease reads for this open of the shard (once). keel keeps
  /// `opts.read_index` until the shard closes.
  Result<void> configure_consensus(LeaseOptions opts) const {
    if (!ptr_) return detail::empty_handle("keel::Shard");
    if (!opts.read_index) return Error(Status::InvalidArgument, "LeaseOptions::read_index is empty");
    keel_lease_options_t o{};
    if (auto st = keel_lease_options_init_sized(&o, sizeof o); st != KEEL_STATUS_OK) {
      detail::ErrorOut none;
      return none.take(st);
    }
    // A negative time is a mistake, never 0: a margin read as 0 would let
    // through a lease the check must refuse.
    for (const detail::Millis d :
         {opts.lease, opts.election_timeout_min, opts.max_clock_drift, opts.max_round_trip, opts.read_timeout}) {
      if (d.value.count() < 0) return Error(Status::InvalidArgument, "LeaseOptions: a negative duration");
    }
    const auto ms = [](detail::Millis d) { return static_cast<uint64_t>(d.value.count()); };
    o.self_id = opts.self_id;
    o.lease_ms = ms(opts.lease);
    o.election_timeout_min_ms = ms(opts.election_timeout_min);
    o.max_clock_drift_ms = ms(opts.max_clock_drift);
    o.max_round_trip_ms = ms(opts.max_round_trip);
    o.read_timeout_ms = ms(opts.read_timeout);
    o.default_level = static_cast<uint32_t>(opts.default_level);
    if (opts.manual_clock && opts.boottime_clock) {
      return Error(Status::InvalidArgument, "LeaseOptions: manual_clock and boottime_clock are both set");
    }
    o.clock = opts.manual_clock ? KEEL_CLOCK_MANUAL : opts.boottime_clock ? KEEL_CLOCK_BOOTTIME : KEEL_CLOCK_MONOTONIC;
    o.read_index = &detail::read_index_call;
    // keel owns it from here, and deletes it through read_index_free.
    o.read_index_user_data = new ReadIndexFn(std::move(opts.read_index));
    o.read_index_free = &detail::read_index_free;
    detail::ErrorOut err;
    return detail::check(keel_shard_consensus_configure(ptr_.get(), &o, err.out()), err);
  }
  /// Role and term, with the leader's id when a follower knows it (0: unknown).
  Result<void> consensus_set_role(Role role, uint64_t term, uint64_t leader_id = 0) const {
    return run_call([&](keel_error_t** e) {
      return keel_shard_consensus_set_role(ptr_.get(), static_cast<uint32_t>(role), term, leader_id, e);
    });
  }
  /// The voters: `incoming`, and `outgoing` during a joint configuration. No learners.
  Result<void> consensus_set_voters(const std::vector<uint64_t>& incoming,
                                    const std::vector<uint64_t>& outgoing = {}) const {
    return run_call([&](keel_error_t** e) {
      return keel_shard_consensus_set_voters(ptr_.get(), incoming.data(), incoming.size(), outgoing.data(),
                                             outgoing.size(), e);
    });
  }
  /// Voter `peer_id` acknowledged a message of `term` this leader SENT at `sent_at_ns`.
  Result<void> consensus_ack(uint64_t peer_id, uint64_t term, uint64_t sent_at_ns) const {
    return run_call([&](keel_error_t** e) { return keel_shard_consensus_ack(ptr_.get(), peer_id, term, sent_at_ns, e); });
  }
  Result<void> consensus_set_applied(uint64_t index) const {
    return run_call([&](keel_error_t** e) { return keel_shard_consensus_set_applied(ptr_.get(), index, e); });
  }
  Result<void> consensus_set_committed(uint64_t index) const {
    return run_call([&](keel_error_t** e) { return keel_shard_consensus_set_committed(ptr_.get(), index, e); });
  }
  /// An entry of `term` was applied; true when it counted (the current term, leading).
  Result<bool> consensus_term_applied(uint64_t term) const {
    bool recorded = false;
    auto r = run_call([&](keel_error_t** e) { return keel_shard_consensus_term_applied(ptr_.get(), term, &recorded, e); });
    if (!r) return r.err();
    return recorded;
  }
  Result<void> consensus_set_transfer(bool in_progress) const {
    return run_call([&](keel_error_t** e) { return keel_shard_consensus_set_transfer(ptr_.get(), in_progress, e); });
  }
  /// The time of a manual clock, in nanoseconds (0: no time).
  Result<void> consensus_set_clock(uint64_t now_ns) const {
    return run_call([&](keel_error_t** e) { return keel_shard_consensus_set_clock(ptr_.get(), now_ns, e); });
  }
  /// Now on the shard's lease clock, in nanoseconds (0: no time): stamp a
  /// message with it when sending, for consensus_ack() of its ack.
  Result<uint64_t> consensus_now() const {
    uint64_t now = 0;
    auto r = run_call([&](keel_error_t** e) { return keel_shard_consensus_now(ptr_.get(), &now, e); });
    if (!r) return r.err();
    return now;
  }

  /// Begins a read session: the lease check or one read-index now, none
  /// for the reads that name it (pass it as their ReadOptions).
  Result<ReadSession> read_begin(ReadLevel level = ReadLevel::Default,
                                 detail::Millis timeout = std::chrono::milliseconds(0)) const {
    if (!ptr_) return detail::empty_handle("keel::Shard");
    const keel_read_options_t o = ReadOptions(level, timeout).to_c();
    keel_read_session_t* session = nullptr;
    uint64_t index = 0;
    detail::ErrorOut err;
    const keel_status_t st = keel_shard_read_begin(ptr_.get(), &o, &session, &index, err.out());
    if (st != KEEL_STATUS_OK) return err.take(st);
    return ReadSession(session, index);
  }

  /// The lease facts and counters (keel_shard_lease_stats()).
  Result<LeaseStats> lease_stats() const {
    if (!ptr_) return detail::empty_handle("keel::Shard");
    keel_lease_stats_t s{};
    s.struct_size = static_cast<uint32_t>(sizeof s);
    detail::ErrorOut err;
    const keel_status_t st = keel_shard_lease_stats(ptr_.get(), &s, err.out());
    if (st != KEEL_STATUS_OK) return err.take(st);
    LeaseStats o;
    o.role = static_cast<Role>(s.role);
    o.term = s.term;
    o.leader_id = s.leader_id;
    o.applied_index = s.applied_index;
    o.lease_hits = s.lease_hits;
    o.miss_not_leader = s.miss_not_leader;
    o.miss_ack_stale = s.miss_ack_stale;
    o.miss_ack_missing = s.miss_ack_missing;
    o.miss_ack_future = s.miss_ack_future;
    o.miss_transfer = s.miss_transfer;
    o.miss_term_not_applied = s.miss_term_not_applied;
    o.miss_clock = s.miss_clock;
    o.read_index_calls = s.read_index_calls;
    o.read_index_errors = s.read_index_errors;
    o.read_index_latency_ns_total = s.read_index_latency_ns_total;
    o.read_index_latency_ns_max = s.read_index_latency_ns_max;
    o.read_index_timeouts = s.read_index_timeouts;
    o.acks_ignored_not_leader = s.acks_ignored_not_leader;
    o.acks_ignored_other_term = s.acks_ignored_other_term;
    o.acks_ignored_not_voter = s.acks_ignored_not_voter;
    o.acks_ignored_bad_time = s.acks_ignored_bad_time;
    return o;
  }

  /// A final flush, then frees the handle; the Shard is empty afterwards
  /// even when the flush fails (the error is returned; the WAL still holds
  /// everything). Closing an empty Shard, or one whose Engine was closed
  /// first, succeeds.
  Result<void> close() {
    detail::ErrorOut err;
    return detail::check(keel_shard_close(ptr_.release(), err.out()), err);
  }

 private:
  Result<std::vector<std::optional<Value>>> multi_get_packed(const detail::Packed& packed, const ReadOptions& opts) const {
    if (!ptr_) return detail::empty_handle("keel::Shard");
    if (packed.null_string) return detail::null_string_error();
    const size_t n = packed.lens.size();
    detail::Bufs values(n);
    std::vector<uint32_t> kinds(n, KEEL_KIND_NONE);
    std::vector<uint64_t> versions(n, 0);
    detail::ErrorOut err;
    if (opts.names_ended_session()) return detail::empty_handle("keel::ReadSession");
    const keel_read_options_t o = opts.to_c();
    const keel_status_t st = keel_shard_multi_get_ex(ptr_.get(), &o, packed.bytes.data(), packed.lens.data(), n,
                                                     values.bufs.data(), kinds.data(), versions.data(), err.out());
    if (st != KEEL_STATUS_OK) return err.take(st);
    std::vector<std::optional<Value>> out;
    out.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      if (kinds[i] == KEEL_KIND_NONE) {
        out.emplace_back();
      } else {
        out.emplace_back(Value{static_cast<Kind>(kinds[i]), versions[i], values.bytes(i)});
      }
    }
    return {std::move(out)};
  }

  template <class F>
  Result<void> run_call(F&& c) const {
    if (!ptr_) return detail::empty_handle("keel::Shard");
    detail::ErrorOut err;
    return detail::check(c(err.out()), err);
  }

  template <class F>
  Result<uint64_t> write_one(F&& call) const {
    if (!ptr_) return detail::empty_handle("keel::Shard");
    detail::ErrorOut err;
    uint64_t version = 0;
    const keel_status_t st = call(&version, err.out());
    if (st != KEEL_STATUS_OK) return err.take(st);
    return version;
  }

  Result<uint64_t> get_u64(keel_status_t (*fn)(const keel_shard_t*, uint64_t*)) const {
    if (!ptr_) return detail::empty_handle("keel::Shard");
    uint64_t v = 0;
    const keel_status_t st = fn(ptr_.get(), &v);
    if (st != KEEL_STATUS_OK) {
      detail::ErrorOut none;  // these calls carry no error object
      return none.take(st);
    }
    return v;
  }
};

// ---- engine ----------------------------------------------------------------------

/// The resources an engine holds now (keel_engine_stats_t; docs/STORAGE.md,
/// "Resource model").
struct EngineStats {
  uint32_t open_shards = 0;        ///< shards open now
  uint64_t threads = 0;            ///< flush and WAL workers; independent of the shard count
  uint64_t open_files = 0;         ///< descriptors open on files below the engine's directory
  uint64_t flush_queue_depth = 0;  ///< shards waiting for a flush worker
  uint64_t wal_queue_depth = 0;    ///< WAL segment preparations and periodic syncs queued
  std::chrono::nanoseconds stalled{0};  ///< time writers waited on the engine's shared workers
  uint64_t write_stalls = 0;       ///< writes of all shards that waited for a flush at max_unflushed_wal_bytes
  std::chrono::nanoseconds write_stall_time{0};  ///< total time those writes waited
  uint64_t max_open_files = 0;        ///< the descriptor cache's bound in force
  uint64_t file_cache_hits = 0;       ///< shard file operations that found their file open
  uint64_t file_cache_misses = 0;     ///< ... that opened it again (it had been closed)
  uint64_t file_cache_evictions = 0;  ///< idle files closed to stay within the bound
  uint64_t commit_log_commits = 0;           ///< shard WAL frames (one per write group) the commit log made durable
  uint64_t commit_log_checkpoints = 0;       ///< its checkpoints
  uint64_t commit_log_checkpoint_syncs = 0;  ///< shard WAL syncs those made
  uint64_t commit_log_restored_frames = 0;   ///< WAL frames the open gave back after a power loss
};

/// An engine: one data directory hosting shards by id (owns a
/// keel_engine_t). The destructor closes it (closing every shard still
/// open, each with a final flush) and ignores errors; call close() to see
/// them. Const members are safe to call from many threads at once.
class Engine : public detail::Handle<keel_engine_t, detail::close_engine> {
 public:
  /// Engine() is empty: every call returns Status::Closed. explicit
  /// Engine(keel_engine_t* owned) takes ownership of a handle opened
  /// through the C API; one given back by release() must be closed with
  /// keel_engine_close().
  using Handle::Handle;

  /// Opens (creating if needed) the data directory `dir`. One engine per
  /// directory: a second open fails with Status::Busy.
  static Result<Engine> open(const std::string& dir, const EngineOptions& opts = EngineOptions()) {
    return detail::open_dir<Engine>(keel_engine_open, dir, opts.raw());
  }

  /// Opens shard `id`, recovering it. Status::NotFound when it does not
  /// exist and `create_if_missing` is false; Status::Busy when it is open.
  Result<Shard> open_shard(uint32_t id, bool create_if_missing = true) const {
    if (!ptr_) return detail::empty_handle("keel::Engine");
    detail::ErrorOut err;
    keel_shard_t* s = nullptr;
    const keel_status_t st = keel_engine_shard_open(ptr_.get(), id, create_if_missing, &s, err.out());
    if (st != KEEL_STATUS_OK) return err.take(st);
    return Shard(s);
  }

  /// Deletes shard `id` and its data. Status::Busy while it is open,
  /// Status::NotFound when it does not exist.
  Result<void> drop_shard(uint32_t id) const {
    if (!ptr_) return detail::empty_handle("keel::Engine");
    detail::ErrorOut err;
    return detail::check(keel_engine_shard_drop(ptr_.get(), id, err.out()), err);
  }

  /// The ids of every shard, open or not, ascending.
  Result<std::vector<uint32_t>> list_shards() const {
    if (!ptr_) return detail::empty_handle("keel::Engine");
    std::vector<uint32_t> ids(16);
    for (;;) {
      detail::ErrorOut err;
      size_t n = 0;
      const keel_status_t st = keel_engine_shard_list(ptr_.get(), ids.data(), ids.size(), &n, err.out());
      if (st == KEEL_STATUS_OK) {
        ids.resize(n);
        return {std::move(ids)};
      }
      // BUFFER_TOO_SMALL gives the count needed; shards may be created
      // meanwhile, so ask again with that much room.
      if (st == KEEL_STATUS_BUFFER_TOO_SMALL && n > ids.size()) {
        ids.resize(n);
        continue;
      }
      return err.take(st);
    }
  }

  /// The resources the engine holds now (keel_engine_stats()).
  Result<EngineStats> stats() const {
    if (!ptr_) return detail::empty_handle("keel::Engine");
    keel_engine_stats_t s{};
    s.struct_size = static_cast<uint32_t>(sizeof s);
    const keel_status_t st = keel_engine_stats(ptr_.get(), &s);
    if (st != KEEL_STATUS_OK) {
      detail::ErrorOut none;  // this call carries no error object
      return none.take(st);
    }
    EngineStats o;
    o.open_shards = s.open_shards;
    o.threads = s.threads;
    o.open_files = s.open_files;
    o.flush_queue_depth = s.flush_queue_depth;
    o.wal_queue_depth = s.wal_queue_depth;
    o.stalled = std::chrono::nanoseconds(static_cast<std::chrono::nanoseconds::rep>(s.stall_nanos));
    o.write_stalls = s.write_stalls;
    o.write_stall_time = std::chrono::nanoseconds(static_cast<std::chrono::nanoseconds::rep>(s.write_stall_nanos));
    o.max_open_files = s.max_open_files;
    o.file_cache_hits = s.file_cache_hits;
    o.file_cache_misses = s.file_cache_misses;
    o.file_cache_evictions = s.file_cache_evictions;
    o.commit_log_commits = s.commit_log_commits;
    o.commit_log_checkpoints = s.commit_log_checkpoints;
    o.commit_log_checkpoint_syncs = s.commit_log_checkpoint_syncs;
    o.commit_log_restored_frames = s.commit_log_restored_frames;
    return o;
  }

  // ---- fenced lease table (docs/LEASE.md) ----------------------------------
  // Per engine and local to this node; after a reopen every lease has
  // expired. Tokens only grow, across restarts too. Any thread.

  /// Grants the lease on `bucket` for `ttl` (at least 1 ms) and returns its
  /// fencing token. Status::Busy while another holder's lease runs;
  /// Status::InvalidArgument for a zero, negative or too large ttl.
  Result<uint64_t> fence_try_acquire(ByteView bucket, detail::Millis ttl) const {
    if (!ptr_) return detail::empty_handle("keel::Engine");
    if (auto ok = detail::check_views({bucket}); !ok) return ok.err();
    detail::ErrorOut err;
    uint64_t token = 0;
    const uint64_t ms = ttl.value.count() < 0 ? 0u : static_cast<uint64_t>(ttl.value.count());
    const keel_status_t st = keel_fence_try_acquire(ptr_.get(), bucket.data(), bucket.size(), ms, &token, err.out());
    if (st != KEEL_STATUS_OK) return err.take(st);
    return token;
  }
  /// Whether `token` holds the lease on `bucket` now (granted, not
  /// released, not expired).
  Result<bool> fence_validate(ByteView bucket, uint64_t token) const {
    return fence_ask(keel_fence_validate, bucket, token);
  }
  /// Releases the lease if `token` holds it and it has not expired; says
  /// whether it did (an expired holder never clears a newer one).
  Result<bool> fence_release(ByteView bucket, uint64_t token) const {
    return fence_ask(keel_fence_release, bucket, token);
  }
  /// The storage-side fence: Status::Fenced when `token` is below the
  /// highest token accepted for `bucket`, else records it (an equal token
  /// passes). No clock involved.
  Result<void> fence_check(ByteView bucket, uint64_t token) const {
    if (!ptr_) return detail::empty_handle("keel::Engine");
    if (auto ok = detail::check_views({bucket}); !ok) return ok.err();
    detail::ErrorOut err;
    return detail::check(keel_fence_check(ptr_.get(), bucket.data(), bucket.size(), token, err.out()), err);
  }

  /// Closes every shard still open and frees the handle; the Engine is
  /// empty afterwards even on error (the first error is returned). Shards
  /// still held then fail with Status::Closed. Closing an empty Engine succeeds.
  Result<void> close() {
    detail::ErrorOut err;
    return detail::check(keel_engine_close(ptr_.release(), err.out()), err);
  }
 private:
  using FenceQuestion = keel_status_t (*)(const keel_engine_t*, const uint8_t*, size_t, uint64_t, bool*, keel_error_t**);
  Result<bool> fence_ask(FenceQuestion ask, ByteView bucket, uint64_t token) const {
    if (!ptr_) return detail::empty_handle("keel::Engine");
    if (auto ok = detail::check_views({bucket}); !ok) return ok.err();
    detail::ErrorOut err;
    bool answer = false;
    const keel_status_t st = ask(ptr_.get(), bucket.data(), bucket.size(), token, &answer, err.out());
    if (st != KEEL_STATUS_OK) return err.take(st);
    return answer;
  }
};

// ---- batched socket writers -------------------------------------------------
//
// A Net is a reactor (one keel thread, "keel-net") plus a send backend; a
// Writer is one connected stream socket adopted into a Net; a Publisher
// fans messages out to subscriber sockets of a Net. See docs/WRITER.md.
// All three are internally synchronised: their const members may be
// called from any number of threads at once. Writers and Publishers may
// outlive their Net: once it is closed their calls fail with
// Status::Closed, and close()/destruction still release them.

/// The send backend of a Net (KEEL_NET_BACKEND_*).
enum class Backend : uint32_t {
  Default = KEEL_NET_BACKEND_DEFAULT,   ///< the library's choice (currently Sendmsg)
  Sendmsg = KEEL_NET_BACKEND_SENDMSG,   ///< sendmsg(2) with iovecs, epoll for writability
  IoUring = KEEL_NET_BACKEND_IO_URING,  ///< io_uring when the run-time probe succeeds, else Sendmsg
};

/// "default", "sendmsg", "io_uring" (or "unknown").
inline const char* to_string(Backend b) noexcept {
  switch (b) {
    case Backend::Default: return "default";
    case Backend::Sendmsg: return "sendmsg";
    case Backend::IoUring: return "io_uring";
  }
  return "unknown";
}

/// The event handler of a Net: keel closed connection `conn_id` (a
/// Writer::id() or a Publisher::subscribe() id) on its own, with
/// Status::Io (a send or socket error: the peer reset or went away) or
/// Status::Busy (the cap policy: the peer did not read). `message` is
/// valid only during the call.
///
/// It runs on the net's keel-net reactor thread only — never on a thread
/// of yours — at most once per connection, never after Net::close() (or
/// the Net's destructor) returned, and never for a connection after its
/// Writer::close() / Publisher::unsubscribe() returned. Keep it short: it
/// holds up every socket of the net. It may send, publish, close a Writer
/// or unsubscribe (also the connection it reports, or one of another Net),
/// but not close a Net, its own or another (Status::Busy, the Net stays
/// open: the close would wait for a reactor thread, which may be waiting
/// for this one; a Net destroyed or assigned to there cannot close its
/// net, which stays open, leaked with its reactor thread and handler, and
/// a line on stderr says so: close a Net from another thread). It must not
/// throw: the bridge is noexcept, so an escaping exception calls
/// std::terminate. Whatever it captures must be safe to use from the
/// reactor thread and must outlive the Net.
using EventHandler = std::function<void(uint64_t conn_id, Status status, std::string_view message)>;

/// Options of Net::open(): a copyable value wrapping keel_net_options_t
/// (filled by keel_net_options_init_sized()) plus the event handler.
class NetOptions {
 public:
  NetOptions() noexcept { keel_net_options_init_sized(&raw_, sizeof raw_); }  // cannot fail: valid pointer and size

  NetOptions& backend(Backend b) noexcept { raw_.backend = static_cast<uint32_t>(b); return *this; }
  /// The handler of connections keel closed (see EventHandler); an empty
  /// function for none (the default).
  NetOptions& on_event(EventHandler handler) { on_event_ = std::move(handler); return *this; }

  Backend backend() const noexcept { return static_cast<Backend>(raw_.backend); }
  const EventHandler& on_event() const noexcept { return on_event_; }

  /// The C struct, for fields this wrapper does not know yet. Its callback
  /// fields (on_event, user_data, user_data_free) are used as they are
  /// only when no on_event() handler is set; with one, Net::open() fills
  /// them with its bridge.
  keel_net_options_t& raw() noexcept { return raw_; }
  const keel_net_options_t& raw() const noexcept { return raw_; }

 private:
  keel_net_options_t raw_;
  EventHandler on_event_;
};

/// Per-connection limits of Writer::adopt() and of a Publisher's
/// subscribers: a copyable value wrapping keel_writer_options_t, filled
/// with the library defaults by keel_writer_options_init_sized(). Setters
/// chain; the library validates the values when a writer or publisher is
/// made.
class WriterOptions {
 public:
  WriterOptions() noexcept { keel_writer_options_init_sized(&raw_, sizeof raw_); }  // cannot fail: valid pointer and size

  /// Messages one drain pass handles before it flushes and yields (1 to 1000000; default 100).
  WriterOptions& quota(uint32_t n) noexcept { raw_.quota = n; return *this; }
  /// A batch is flushed once it holds this many bytes (1 to 64 MiB; default 64 KiB).
  WriterOptions& max_batch_bytes(uint64_t bytes) noexcept { raw_.max_batch_bytes = bytes; return *this; }
  /// Messages of at least this many bytes are held by reference, smaller
  /// ones copied (default 4096).
  WriterOptions& copy_threshold(uint64_t bytes) noexcept { raw_.copy_threshold = bytes; return *this; }
  /// More than this many bytes queued for longer than soft_cap_time()
  /// closes the connection (Status::Busy); 0 disables it (default 8 MiB).
  WriterOptions& soft_cap_bytes(uint64_t bytes) noexcept { raw_.soft_cap_bytes = bytes; return *this; }
  /// An append that would queue more than this closes the connection at
  /// once (Status::Busy); 0 disables it; not below soft_cap_bytes (default 32 MiB).
  WriterOptions& hard_cap_bytes(uint64_t bytes) noexcept { raw_.hard_cap_bytes = bytes; return *this; }
  /// iovecs per send, 1 to 1024 (default 1024).
  WriterOptions& iov_max(uint32_t n) noexcept { raw_.iov_max = n; return *this; }
  /// How long the soft cap may be exceeded (at most 24 h; default 60 s);
  /// clamped as WalOptions::sync_interval() is.
  WriterOptions& soft_cap_time(detail::Millis ms) noexcept {
    raw_.soft_cap_ms = detail::clamp_ms(ms);
    return *this;
  }
  /// Closing flushes, shuts the socket down for writing and drains the
  /// peer's input to EOF; after this long the socket is closed whatever
  /// is left (at most 10 min; default 2 s).
  WriterOptions& close_timeout(detail::Millis ms) noexcept {
    raw_.close_timeout_ms = detail::clamp_ms(ms);
    return *this;
  }

  uint32_t quota() const noexcept { return raw_.quota; }
  uint64_t max_batch_bytes() const noexcept { return raw_.max_batch_bytes; }
  uint64_t copy_threshold() const noexcept { return raw_.copy_threshold; }
  uint64_t soft_cap_bytes() const noexcept { return raw_.soft_cap_bytes; }
  uint64_t hard_cap_bytes() const noexcept { return raw_.hard_cap_bytes; }
  uint32_t iov_max() const noexcept { return raw_.iov_max; }
  std::chrono::milliseconds soft_cap_time() const noexcept { return std::chrono::milliseconds(raw_.soft_cap_ms); }
  std::chrono::milliseconds close_timeout() const noexcept { return std::chrono::milliseconds(raw_.close_timeout_ms); }

  /// The C struct, for fields this wrapper does not know yet.
  keel_writer_options_t& raw() noexcept { return raw_; }
  const keel_writer_options_t& raw() const noexcept { return raw_; }

 private:
  keel_writer_options_t raw_;
};

/// Counters of one writer or subscriber (keel_writer_stats_t; see its
/// field comments in keel.h and docs/WRITER.md, R12).
struct WriterStats {
  uint64_t sends = 0;               ///< send calls (sendmsg(2) + io_uring SENDMSG)
  uint64_t uring_sends = 0;         ///< of sends, those submitted to io_uring
  uint64_t immediate_sends = 0;     ///< lone messages sent on the caller's thread (R1)
  uint64_t bytes_sent = 0;          ///< bytes the kernel accepted
  uint64_t items = 0;               ///< messages appended
  uint64_t items_sent = 0;          ///< messages handed to a send
  uint64_t control_items = 0;       ///< control items appended (close requests)
  uint64_t passes = 0;              ///< drain passes
  uint64_t batched_passes = 0;      ///< passes that started with >= 2 messages queued
  uint64_t flush_idle = 0;          ///< flushes: the last queued message was done
  uint64_t flush_size = 0;          ///< flushes: max_batch_bytes reached
  uint64_t flush_iovec = 0;         ///< flushes: iov_max reached
  uint64_t flush_quota = 0;         ///< flushes: the pass reached its quota
  uint64_t flush_wait = 0;          ///< flushes: before a fence
  uint64_t flush_close = 0;         ///< flushes: before a close
  uint64_t short_sends = 0;         ///< sends the kernel took only part of
  uint64_t eagain = 0;              ///< sends refused with EAGAIN
  uint64_t writable_waits = 0;      ///< waits for the socket to become writable
  uint64_t max_items_per_send = 0;  ///< most messages one send carried
  uint64_t queued_bytes = 0;        ///< appended, not yet accepted by the kernel, now
  std::chrono::nanoseconds oldest_unflushed{0};  ///< age of the oldest byte the kernel has not taken, now
  std::chrono::nanoseconds max_flush_wait{0};    ///< longest append-to-send wait of a byte

  /// Batch density: messages per send (0 before the first send).
  double items_per_send() const noexcept {
    return sends ? static_cast<double>(items_sent) / static_cast<double>(sends) : 0.0;
  }
};

/// Counters of a publisher (keel_publisher_stats_t). The send counters are
/// summed over every subscriber it ever had (one that left counts as it
/// was when it left), so they never go backwards.
struct PublisherStats {
  uint64_t published = 0;    ///< messages published
  uint64_t flushes = 0;      ///< drain points (flush() and publish(.., true))
  uint64_t subscribers = 0;  ///< subscribers still open
  uint64_t cut_off = 0;      ///< subscribers keel closed, not yet unsubscribed
  uint64_t sends = 0;
  uint64_t bytes_sent = 0;
  uint64_t items_sent = 0;
};

namespace detail {

/// The heap state behind a Net's event handler: keel_net_options_t's
/// user_data, released by keel through user_data_free when the net closes.
struct NetEvents {
  EventHandler handler;

  explicit NetEvents(EventHandler h) : handler(std::move(h)) {}

  static void on_event(void* user, uint64_t conn_id, keel_status_t status, const char* message) noexcept {
    const auto* self = static_cast<const NetEvents*>(user);
    self->handler(conn_id, static_cast<Status>(status), message ? std::string_view(message) : std::string_view());
  }
  static void free(void* user) noexcept { delete static_cast<NetEvents*>(user); }
};

inline WriterStats to_stats(const keel_writer_stats_t& s) noexcept {
  using ns = std::chrono::nanoseconds;
  WriterStats o;
  o.sends = s.sends;
  o.uring_sends = s.uring_sends;
  o.immediate_sends = s.immediate_sends;
  o.bytes_sent = s.bytes_sent;
  o.items = s.items;
  o.items_sent = s.items_sent;
  o.control_items = s.control_items;
  o.passes = s.passes;
  o.batched_passes = s.batched_passes;
  o.flush_idle = s.flush_idle;
  o.flush_size = s.flush_size;
  o.flush_iovec = s.flush_iovec;
  o.flush_quota = s.flush_quota;
  o.flush_wait = s.flush_wait;
  o.flush_close = s.flush_close;
  o.short_sends = s.short_sends;
  o.eagain = s.eagain;
  o.writable_waits = s.writable_waits;
  o.max_items_per_send = s.max_items_per_send;
  o.queued_bytes = s.queued_bytes;
  o.oldest_unflushed = ns(static_cast<ns::rep>(s.oldest_unflushed_ns));
  o.max_flush_wait = ns(static_cast<ns::rep>(s.max_flush_wait_ns));
  return o;
}

inline keel_writer_stats_t stats_out() noexcept {
  keel_writer_stats_t s{};
  s.struct_size = static_cast<uint32_t>(sizeof s);
  return s;
}

}  // namespace detail

/// A reactor: one keel thread ("keel-net") and one send backend, the home
/// of Writers and Publishers (owns a keel_net_t). The destructor closes it
/// (see close()) and ignores errors. Const members are safe to call from
/// many threads at once; close(), moving and destruction must not race
/// with them, and must not happen in an event handler (of this net or
/// another, where a Net destroyed leaks its net: see EventHandler).
class Net : public detail::Handle<keel_net_t, detail::close_net> {
 public:
  /// Net() is empty: every call returns Status::Closed. explicit
  /// Net(keel_net_t* owned) takes ownership of a handle opened through the
  /// C API; one given back by release() must be closed with
  /// keel_net_close() (which also releases the event handler).
  using Handle::Handle;

  /// Starts a reactor thread with the backend `opts` asks for; Backend::IoUring
  /// falls back to Backend::Sendmsg when io_uring is unavailable (backend()
  /// tells). The event handler, if any, is copied to the heap and released
  /// once the net is closed (by keel, through user_data_free).
  static Result<Net> open(const NetOptions& opts = NetOptions()) {
    if (const auto& abi = detail::abi_once(); !abi) return abi.err();
    keel_net_options_t raw = opts.raw();
    std::unique_ptr<detail::NetEvents> events;
    if (opts.on_event()) {
      events = std::make_unique<detail::NetEvents>(opts.on_event());
      raw.on_event = &detail::NetEvents::on_event;
      raw.user_data = events.get();
      raw.user_data_free = &detail::NetEvents::free;
    }
    detail::ErrorOut err;
    keel_net_t* n = nullptr;
    const keel_status_t st = keel_net_open(&raw, &n, err.out());
    // A failed open never calls user_data_free: `events` is deleted here.
    if (st != KEEL_STATUS_OK) return err.take(st);
    (void)events.release();  // now keel's: user_data_free deletes it at close
    return Net(n);
  }

  /// Why Backend::IoUring was asked for and sendmsg runs
  /// (keel_net_fallback()): `code` is a KEEL_NET_FALLBACK_* value,
  /// KEEL_NET_FALLBACK_NONE with an empty message when nothing fell back.
  struct Fallback {
    uint32_t code = KEEL_NET_FALLBACK_NONE;
    std::string message;
  };
  Result<Fallback> fallback() const {
    if (!ptr_) return detail::empty_handle("keel::Net");
    std::string buf(256, '\0');
    for (;;) {
      detail::ErrorOut err;
      uint32_t code = 0;
      size_t len = 0;
      const keel_status_t st = keel_net_fallback(ptr_.get(), &code, buf.data(), buf.size(), &len, err.out());
      if (st == KEEL_STATUS_BUFFER_TOO_SMALL && len > buf.size()) {
        buf.resize(len);
        continue;
      }
      if (st != KEEL_STATUS_OK) return err.take(st);
      buf.resize(len > 0 ? len - 1 : 0);  // without the NUL
      return Fallback{code, std::move(buf)};
    }
  }

  /// The backend that runs: Backend::Sendmsg or Backend::IoUring.
  Result<Backend> backend() const {
    if (!ptr_) return detail::empty_handle("keel::Net");
    uint32_t b = 0;
    const keel_status_t st = keel_net_backend(ptr_.get(), &b);
    if (st != KEEL_STATUS_OK) {
      detail::ErrorOut none;  // this call carries no error object
      return none.take(st);
    }
    return static_cast<Backend>(b);
  }

  /// Closes every writer and subscriber of the net (each flushes what it
  /// queued, within its close_timeout), stops the reactor thread and
  /// releases the event handler; no handler call runs after it returns.
  /// It waits for queued bytes only (each within its close_timeout, 2 s by
  /// default), never for an idle peer to close its side, also not for
  /// writers closed earlier that are still waiting for their peer.
  /// The Net is empty afterwards, except when called from an event handler
  /// (of this net or another): that returns Status::Busy and leaves the
  /// net open. Writers
  /// and Publishers stay valid, answer Status::Closed, and are closed as
  /// usual. Closing an empty Net succeeds.
  Result<void> close() {
    detail::ErrorOut err;
    const keel_status_t st = keel_net_close(ptr_.get(), err.out());
    if (st == KEEL_STATUS_BUSY) return err.take(st);  // on the reactor thread: nothing was closed
    (void)ptr_.release();  // freed by keel (also on the other errors)
    return detail::check(st, err);
  }
};

/// One connected stream socket (TCP or Unix) adopted into a Net for
/// batched writing (owns a keel_writer_t). A send without `more` on an
/// idle connection is one send(2) before it returns; messages queued
/// meanwhile (or with `more`) leave together in as few sends as possible.
/// Nothing blocks: when the socket is full the rest waits on the reactor.
/// The destructor closes it (see close()). Const members are safe to call
/// from many threads at once; close(), moving and destruction must not
/// race with them.
class Writer : public detail::Handle<keel_writer_t, detail::close_writer> {
 public:
  /// Writer() is empty: every call returns Status::Closed. explicit
  /// Writer(keel_writer_t* owned) takes ownership of a writer adopted
  /// through the C API; one given back by release() must be closed with
  /// keel_writer_close().
  using Handle::Handle;

  /// Adopts `fd`, a connected stream socket. On success keel owns the fd:
  /// it sets TCP_NODELAY (TCP), sends with MSG_DONTWAIT|MSG_NOSIGNAL
  /// (O_NONBLOCK is left as it is) and closes the fd when the writer is
  /// closed. You may keep reading from the fd (requests) until close();
  /// never write to it or close it. On failure (Status::InvalidArgument
  /// for a bad, unconnected or non-stream fd or bad options,
  /// Status::Closed for a closed net) the fd is still yours.
  static Result<Writer> adopt(const Net& net, int fd, const WriterOptions& opts = WriterOptions()) {
    if (!net) return detail::empty_handle("keel::Net");
    detail::ErrorOut err;
    keel_writer_t* w = nullptr;
    const keel_status_t st = keel_writer_adopt(net.raw(), fd, &opts.raw(), &w, err.out());
    if (st != KEEL_STATUS_OK) return err.take(st);
    return Writer(w);
  }

  /// The connection id (the `conn_id` the event handler reports); unique
  /// within the net, never reused.
  Result<uint64_t> id() const {
    if (!ptr_) return detail::empty_handle("keel::Writer");
    uint64_t id = 0;
    const keel_status_t st = keel_writer_id(ptr_.get(), &id);
    if (st != KEEL_STATUS_OK) {
      detail::ErrorOut none;  // this call carries no error object
      return none.take(st);
    }
    return id;
  }

  /// Appends one message (copied). Without `more` it goes out now (alone
  /// on an idle connection: one send on this thread) together with what
  /// is queued; with `more` it is only queued (no syscall) until the next
  /// send without `more` or flush(). Status::Io: the send failed now (the
  /// connection is closed and reported to the handler once);
  /// Status::Closed: keel closed it earlier (the message says why) or the
  /// net is closed; Status::Busy: the hard cap closed it.
  Result<void> send(ByteView msg, bool more = false) const {
    if (!ptr_) return detail::empty_handle("keel::Writer");
    if (auto ok = detail::check_views({msg}); !ok) return ok;
    detail::ErrorOut err;
    return detail::check(keel_writer_send(ptr_.get(), msg.data(), msg.size(), flags(more), err.out()), err);
  }

  /// Appends `count` messages at once, accepted all or none, drained
  /// together (one send per quota messages). They are packed into one
  /// buffer first (the form keel_writer_send_batch takes; see
  /// send_packed() to skip the copy). An empty batch is
  /// Status::InvalidArgument.
  Result<void> send_batch(const ByteView* msgs, size_t count, bool more = false) const {
    const detail::Packed packed(msgs, msgs + count);
    if (packed.null_string) return detail::null_string_error();
    return send_packed(ByteView(packed.bytes.data(), packed.bytes.size()), packed.lens.data(), count, more);
  }
  /// Any range whose elements convert to ByteView: std::vector<std::string_view>,
  /// std::vector<std::string>, std::array<std::vector<uint8_t>, N>, or one
  /// that makes its elements on the fly (each is copied as it is read).
  template <class Range, class = std::enable_if_t<!std::is_pointer_v<std::decay_t<Range>>>>
  Result<void> send_batch(const Range& msgs, bool more = false) const {
    using std::begin;
    using std::end;
    const detail::Packed packed(begin(msgs), end(msgs));
    if (packed.null_string) return detail::null_string_error();
    return send_packed(ByteView(packed.bytes.data(), packed.bytes.size()), packed.lens.data(), packed.lens.size(), more);
  }
  Result<void> send_batch(std::initializer_list<std::string_view> msgs, bool more = false) const {
    return send_batch<std::initializer_list<std::string_view>>(msgs, more);
  }
  /// send_batch() of messages already packed back to back in `data`,
  /// message i being `lens[i]` bytes long.
  Result<void> send_packed(ByteView data, const size_t* lens, size_t count, bool more = false) const {
    if (!ptr_) return detail::empty_handle("keel::Writer");
    if (auto ok = detail::check_views({data}); !ok) return ok.err();
    // The total may be 0 (every message empty): keel accepts NULL data then.
    detail::ErrorOut err;
    return detail::check(keel_writer_send_batch(ptr_.get(), data.data(), lens, count, flags(more), err.out()), err);
  }

  /// Sends what `more` left queued (as a send without `more` would).
  Result<void> flush() const {
    if (!ptr_) return detail::empty_handle("keel::Writer");
    detail::ErrorOut err;
    return detail::check(keel_writer_flush(ptr_.get(), err.out()), err);
  }

  /// The counters; readable after keel closed the connection too.
  Result<WriterStats> stats() const {
    if (!ptr_) return detail::empty_handle("keel::Writer");
    keel_writer_stats_t s = detail::stats_out();
    const keel_status_t st = keel_writer_stats(ptr_.get(), &s);
    if (st != KEEL_STATUS_OK) {
      detail::ErrorOut none;  // this call carries no error object
      return none.take(st);
    }
    return detail::to_stats(s);
  }

  /// Closes the writer and frees the handle: what is queued is still
  /// sent, then the socket is shut down for writing, the peer's input is
  /// drained to EOF and the fd closed — on the reactor thread, within
  /// close_timeout; this call does not wait for that. No handler call for
  /// this connection starts after it returns. May be called from the
  /// event handler. The Writer is empty afterwards; closing an empty
  /// Writer succeeds.
  Result<void> close() {
    detail::ErrorOut err;
    return detail::check(keel_writer_close(ptr_.release(), err.out()), err);
  }

 private:
  static uint32_t flags(bool more) noexcept { return more ? static_cast<uint32_t>(KEEL_WRITER_MORE) : 0u; }
};

/// Fan-out of messages to subscriber sockets of a Net (owns a
/// keel_publisher_t). publish() copies a message once and queues it for
/// every subscriber without a syscall; the drain point (flush(), or
/// publish(msg, true)) gives each subscriber with messages pending one
/// send per quota messages. A subscriber that fails or exceeds its caps
/// is cut off and reported to the net's event handler once; it never
/// slows the others; release it with unsubscribe(). The destructor closes
/// the publisher (see close()). Const members are safe to call from many
/// threads at once; close(), moving and destruction must not race with them.
class Publisher : public detail::Handle<keel_publisher_t, detail::close_publisher> {
 public:
  /// Publisher() is empty: every call returns Status::Closed. explicit
  /// Publisher(keel_publisher_t* owned) takes ownership of a publisher
  /// made through the C API; one given back by release() must be closed
  /// with keel_publisher_close().
  using Handle::Handle;

  /// A publisher on `net` whose subscribers use `sub_opts`.
  static Result<Publisher> create(const Net& net, const WriterOptions& sub_opts = WriterOptions()) {
    if (!net) return detail::empty_handle("keel::Net");
    detail::ErrorOut err;
    keel_publisher_t* p = nullptr;
    const keel_status_t st = keel_publisher_new(net.raw(), &sub_opts.raw(), &p, err.out());
    if (st != KEEL_STATUS_OK) return err.take(st);
    return Publisher(p);
  }

  /// Adopts connected stream socket `fd` as a subscriber (ownership as in
  /// Writer::adopt(): yours again only on failure) and returns its id,
  /// the `conn_id` the event handler reports. It receives every message
  /// published after this call.
  Result<uint64_t> subscribe(int fd) const {
    if (!ptr_) return detail::empty_handle("keel::Publisher");
    detail::ErrorOut err;
    uint64_t id = 0;
    const keel_status_t st = keel_publisher_subscribe(ptr_.get(), fd, &id, err.out());
    if (st != KEEL_STATUS_OK) return err.take(st);
    return id;
  }

  /// Removes subscriber `id` and closes its socket as Writer::close()
  /// does (what it queued is still sent); also how a subscriber keel cut
  /// off is released. Status::NotFound for an unknown id.
  Result<void> unsubscribe(uint64_t id) const {
    if (!ptr_) return detail::empty_handle("keel::Publisher");
    detail::ErrorOut err;
    return detail::check(keel_publisher_unsubscribe(ptr_.get(), id, err.out()), err);
  }

  /// Queues `msg` for every open subscriber (no syscall); with `flush`
  /// it is also the drain point.
  Result<void> publish(ByteView msg, bool flush = false) const {
    if (!ptr_) return detail::empty_handle("keel::Publisher");
    if (auto ok = detail::check_views({msg}); !ok) return ok;
    detail::ErrorOut err;
    const uint32_t flags = flush ? static_cast<uint32_t>(KEEL_PUBLISH_FLUSH) : 0u;
    return detail::check(keel_publisher_publish(ptr_.get(), msg.data(), msg.size(), flags, err.out()), err);
  }

  /// The drain point: every subscriber with messages pending gets one
  /// drain. A subscriber's send errors go to the event handler, not here.
  Result<void> flush() const {
    if (!ptr_) return detail::empty_handle("keel::Publisher");
    detail::ErrorOut err;
    return detail::check(keel_publisher_flush(ptr_.get(), err.out()), err);
  }

  Result<PublisherStats> stats() const {
    if (!ptr_) return detail::empty_handle("keel::Publisher");
    keel_publisher_stats_t s{};
    s.struct_size = static_cast<uint32_t>(sizeof s);
    const keel_status_t st = keel_publisher_stats(ptr_.get(), &s);
    if (st != KEEL_STATUS_OK) {
      detail::ErrorOut none;  // this call carries no error object
      return none.take(st);
    }
    PublisherStats o;
    o.published = s.published;
    o.flushes = s.flushes;
    o.subscribers = s.subscribers;
    o.cut_off = s.cut_off;
    o.sends = s.sends;
    o.bytes_sent = s.bytes_sent;
    o.items_sent = s.items_sent;
    return o;
  }

  /// The counters of subscriber `id`; Status::NotFound for an unknown id.
  Result<WriterStats> subscriber_stats(uint64_t id) const {
    if (!ptr_) return detail::empty_handle("keel::Publisher");
    detail::ErrorOut err;
    keel_writer_stats_t s = detail::stats_out();
    const keel_status_t st = keel_publisher_subscriber_stats(ptr_.get(), id, &s, err.out());
    if (st != KEEL_STATUS_OK) return err.take(st);
    return detail::to_stats(s);
  }

  /// Unsubscribes every subscriber (what they queued is still sent) and
  /// frees the handle; the Publisher is empty afterwards. Closing an
  /// empty Publisher succeeds.
  Result<void> close() {
    detail::ErrorOut err;
    return detail::check(keel_publisher_close(ptr_.release(), err.out()), err);
  }
};

// ---- node transport -----------------------------------------------------------
//
// A Node listens on one TCP address, dials peers and carries frames between
// peers that passed the handshake; with a cluster secret the handshake is
// authenticated (frames are not encrypted). See docs/TRANSFER.md, "The node
// transport".

/// The event handler of a Node: peer `peer_id` finished its handshake
/// (Status::Ok), or a connection ended: Status::Refused (bad MAC, replay,
/// no common version, wrong node id, a non-loopback peer without a
/// secret), Status::Protocol (malformed, oversized or unknown frame),
/// Status::Timeout (handshake or heartbeats), Status::Busy (the peer
/// stopped reading), Status::Io (reset, send error) or Status::Closed
/// (closed by the peer or by Node::close()). `peer_id` is 0 when the
/// handshake did not get as far as the peer's id; `message` is valid only
/// during the call.
///
/// It runs on a keel thread of the node (a connection's reader, the accept
/// thread) or on the thread in Node::connect() whose peer was refused, so
/// possibly on several threads at once, and never after Node::close() (or
/// the destructor) returned. Keep it short. It may call its Node's const
/// members (they answer Status::Closed once the node is closing, which
/// also reports Status::Closed to it) but must not close its own Node
/// nor throw: the bridge is noexcept, so an escaping exception calls
/// std::terminate. The close would join the thread the handler runs on:
/// Node::close() answers Status::Busy there and leaves the node open; a
/// Node destroyed (or assigned to) there cannot close its node, which
/// runs on, leaked with its threads and this handler, never freed (a line
/// on stderr says so). Close a Node from another thread, e.g. one the
/// handler wakes. Whatever it captures must be safe to use from those
/// threads and must outlive the Node.
using NodeEventHandler = std::function<void(uint64_t peer_id, Status status, std::string_view message)>;

class Node;
class Transfer;

/// Options of Node::open(): a copyable value wrapping keel_node_options_t,
/// filled with the library defaults by keel_node_options_init_sized(), plus
/// what its pointers point to: the listen address and the secrets are
/// copied in by their setters, so nothing passed to them needs to outlive
/// the call. Setters chain; the library validates the values when the node
/// opens. node_id has no default: set it (0 is Status::InvalidArgument).
class NodeOptions {
 public:
  NodeOptions() noexcept { keel_node_options_init_sized(&raw_, sizeof raw_); }  // cannot fail: valid pointer and size

  /// This node's id: non-zero, unique in the cluster.
  NodeOptions& node_id(uint64_t id) noexcept { raw_.node_id = id; return *this; }
  /// "host:port" to listen on; port 0 picks one (Node::addr() tells
  /// which). Unset or empty: the default "127.0.0.1:0".
  NodeOptions& listen_addr(std::string addr) { listen_ = std::move(addr); return *this; }
  /// The cluster secret (16 to 1024 bytes), copied: handshake MACs are
  /// made with it and accepted with it. Empty: no secret (no
  /// authentication; loopback peers only unless allow_remote_without_secret).
  NodeOptions& secret(ByteView s) { return set_bytes(secret_, secret_null_, s); }
  /// A second secret accepted alongside secret() during a rotation (never
  /// used to send); empty for none. Not without secret().
  NodeOptions& secret2(ByteView s) { return set_bytes(secret2_, secret2_null_, s); }
  /// Let peers that are not on loopback connect without a secret (default false).
  NodeOptions& allow_remote_without_secret(bool allow) noexcept {
    raw_.allow_remote_without_secret = allow ? 1 : 0;
    return *this;
  }
  /// Largest frame payload, 4 KiB to 1 GiB (default 16 MiB).
  NodeOptions& max_frame_bytes(uint32_t bytes) noexcept { raw_.max_frame_bytes = bytes; return *this; }
  /// A connection without a finished handshake is closed after this long,
  /// 1 ms to 1 h (default 5 s); also the TCP connect timeout of connect().
  /// Durations are clamped as WalOptions::sync_interval() is.
  NodeOptions& handshake_timeout(detail::Millis ms) noexcept {
    raw_.handshake_timeout_ms = detail::clamp_ms(ms);
    return *this;
  }
  /// Accepted connections in their handshake at once, 1 to 65536, or 0
  /// (the default) for 64; past it a new one is refused at once
  /// (refused_handshake_limit).
  NodeOptions& max_handshakes(uint32_t n) noexcept { raw_.max_handshakes = n; return *this; }
  /// Bytes one connection may buffer (one inbound frame plus queued
  /// outbound bytes); at least twice max_frame_bytes plus headers
  /// (default 64 MiB).
  NodeOptions& conn_memory_bytes(uint64_t bytes) noexcept { raw_.conn_memory_bytes = bytes; return *this; }
  /// A PING goes out every interval, 1 ms to 1 h (default 1 s).
  NodeOptions& heartbeat_interval(detail::Millis ms) noexcept {
    raw_.heartbeat_interval_ms = detail::clamp_ms(ms);
    return *this;
  }
  /// A peer silent for this many intervals is dropped, 1 to 1000 (default 5).
  NodeOptions& heartbeat_misses(uint32_t n) noexcept { raw_.heartbeat_misses = n; return *this; }
  /// How long Node::close() waits for queued frames to be sent, 0 to 10 min
  /// (default 2 s); the rest is cancelled and counted.
  NodeOptions& close_timeout(detail::Millis ms) noexcept {
    raw_.close_timeout_ms = detail::clamp_ms(ms);
    return *this;
  }
  /// Transfers the node runs at once, 1 to 1024 (default 4).
  NodeOptions& max_concurrent_transfers(uint32_t n) noexcept { raw_.max_concurrent_transfers = n; return *this; }
  /// Bandwidth cap of one transfer in bytes per second; 0 (default): none.
  NodeOptions& transfer_bandwidth_bytes_per_sec(uint64_t bps) noexcept {
    raw_.transfer_bandwidth_bytes_per_sec = bps;
    return *this;
  }
  /// The event handler (see NodeEventHandler); an empty function for none
  /// (the default).
  NodeOptions& on_event(NodeEventHandler handler) { on_event_ = std::move(handler); return *this; }

  uint64_t node_id() const noexcept { return raw_.node_id; }
  /// The address set by listen_addr(std::string); empty when unset.
  const std::string& listen_addr() const noexcept { return listen_; }
  /// The secrets set by their setters (views into this object); empty when unset.
  ByteView secret() const noexcept { return ByteView(secret_.data(), secret_.size()); }
  ByteView secret2() const noexcept { return ByteView(secret2_.data(), secret2_.size()); }
  bool allow_remote_without_secret() const noexcept { return raw_.allow_remote_without_secret != 0; }
  uint32_t max_frame_bytes() const noexcept { return raw_.max_frame_bytes; }
  std::chrono::milliseconds handshake_timeout() const noexcept {
    return std::chrono::milliseconds(raw_.handshake_timeout_ms);
  }
  uint32_t max_handshakes() const noexcept { return raw_.max_handshakes; }
  uint64_t conn_memory_bytes() const noexcept { return raw_.conn_memory_bytes; }
  std::chrono::milliseconds heartbeat_interval() const noexcept {
    return std::chrono::milliseconds(raw_.heartbeat_interval_ms);
  }
  uint32_t heartbeat_misses() const noexcept { return raw_.heartbeat_misses; }
  std::chrono::milliseconds close_timeout() const noexcept { return std::chrono::milliseconds(raw_.close_timeout_ms); }
  uint32_t max_concurrent_transfers() const noexcept { return raw_.max_concurrent_transfers; }
  uint64_t transfer_bandwidth_bytes_per_sec() const noexcept { return raw_.transfer_bandwidth_bytes_per_sec; }
  const NodeEventHandler& on_event() const noexcept { return on_event_; }

  /// The C struct, for fields this wrapper does not know yet. Node::open()
  /// opens with a copy of it in which listen_addr, secret and secret2
  /// point into this object when their setters gave them a non-empty
  /// value, and on_event/user_data are its bridge when on_event() holds a
  /// handler; otherwise those raw fields are used as they are.
  keel_node_options_t& raw() noexcept { return raw_; }
  const keel_node_options_t& raw() const noexcept { return raw_; }

 private:
  friend class Node;

  /// `null` remembers whether this field's value came from a null const
  /// char* (reported by Node::open()); the next value of the field
  /// replaces it.
  NodeOptions& set_bytes(std::vector<uint8_t>& out, bool& null, ByteView s) {
    null = s.null_string();
    out.assign(s.data(), s.data() + s.size());
    return *this;
  }

  keel_node_options_t raw_;
  std::string listen_;
  std::vector<uint8_t> secret_;
  std::vector<uint8_t> secret2_;
  bool secret_null_ = false;   ///< secret() was last given a null const char*
  bool secret2_null_ = false;  ///< secret2() was last given a null const char*
  NodeEventHandler on_event_;
};

/// Counters of a Node (keel_node_stats_t; docs/TRANSFER.md, "Counters").
/// The refused_* and later counters count connections that ended for that
/// reason, each once; Node::last_error() has the text of the last one.
struct NodeStats {
  uint64_t peers = 0;                 ///< connections with a finished handshake, now
  uint64_t accepted = 0;              ///< connections accepted
  uint64_t dialed = 0;                ///< connections dialed by Node::connect()
  uint64_t handshakes = 0;            ///< handshakes that finished
  uint64_t frames_in = 0;
  uint64_t frames_out = 0;
  uint64_t bytes_in = 0;
  uint64_t bytes_out = 0;
  uint64_t pings_sent = 0;
  uint64_t pongs_received = 0;
  uint64_t cancelled_frames = 0;      ///< outbound frames dropped unsent when a connection closed
  uint64_t refused_bad_mac = 0;       ///< the MAC matched no active secret (or only one side had one)
  uint64_t refused_replay = 0;        ///< a replayed handshake (a HELLO nonce seen before)
  uint64_t refused_version = 0;       ///< no protocol version in common
  uint64_t refused_not_loopback = 0;  ///< not on loopback and no secret configured
  uint64_t refused_wrong_node = 0;    ///< the peer's id is not the one dialed, or is this node's own
  uint64_t handshake_timeouts = 0;
  uint64_t malformed_frames = 0;      ///< frames failing their checks (CRC, version, flags, order)
  uint64_t oversized_frames = 0;      ///< frames announcing more than max_frame_bytes
  uint64_t unknown_types = 0;         ///< frames of a type no service handles
  uint64_t heartbeat_timeouts = 0;
  uint64_t outbound_overflows = 0;    ///< peers cut off because they stopped reading
  uint64_t resets = 0;                ///< connections reset, failed to send, or ended inside a frame
  uint64_t closed_by_peer = 0;        ///< connections the peer closed between frames
  uint64_t closed_by_shutdown = 0;    ///< connections closed by Node::close()
  uint64_t refused_handshake_limit = 0;  ///< refused at once: max_handshakes accepted ones were in their handshake
  uint64_t replaced_connections = 0;  ///< second ready connections to a peer, closed so that one stays
};

namespace detail {

/// The heap state behind a Node's event handler: keel_node_options_t's
/// user_data. keel has no hook to free it, so the Node owns it and frees
/// it only after keel_node_close() returned (no callback runs then).
struct NodeEvents {
  NodeEventHandler handler;
  // The calls the handler makes on its own Node (NodeCall), counted so
  // that closing waits for them and fails later ones: once the close
  // begins, the Node's wrapper no longer lends its handle out (and the
  // close itself reports Status::Closed to the handler).
  std::mutex mu;
  std::condition_variable drained;
  size_t calls = 0;
  bool closing = false;

  explicit NodeEvents(NodeEventHandler h) : handler(std::move(h)) {}

  /// The NodeEvents whose handler runs on this thread now (nullptr when
  /// none), so that Node::close() can refuse to run inside its own handler.
  static const NodeEvents*& running() noexcept {
    static thread_local const NodeEvents* current = nullptr;
    return current;
  }

  static void on_event(void* user, uint64_t peer_id, keel_status_t status, const char* message) noexcept {
    const auto* self = static_cast<const NodeEvents*>(user);
    // Saved and restored: the handler may call connect() on this node,
    // whose refusal calls it again on this thread.
    const NodeEvents* outer = std::exchange(running(), self);
    self->handler(peer_id, static_cast<Status>(status), message ? std::string_view(message) : std::string_view());
    running() = outer;
  }
};

/// The scope of one Node call. Made from that node's own handler, it is
/// counted in NodeEvents::calls, or closed() once the node began closing;
/// from any other thread it does nothing (those calls must not race with
/// closing at all).
class NodeCall {
 public:
  explicit NodeCall(NodeEvents* ev) : ev_(ev && NodeEvents::running() == ev ? ev : nullptr) {
    if (!ev_) return;
    std::lock_guard<std::mutex> lock(ev_->mu);
    if (ev_->closing) {
      ev_ = nullptr;
      closed_ = true;
      return;
    }
    ++ev_->calls;
  }
  ~NodeCall() {
    if (!ev_) return;
    std::lock_guard<std::mutex> lock(ev_->mu);
    if (--ev_->calls == 0 && ev_->closing) ev_->drained.notify_all();
  }
  NodeCall(const NodeCall&) = delete;
  NodeCall& operator=(const NodeCall&) = delete;

  /// The node is closing: the call must not reach keel.
  bool closed() const noexcept { return closed_; }

 private:
  NodeEvents* ev_;
  bool closed_ = false;
};

inline keel_node_stats_t node_stats_out() noexcept {
  keel_node_stats_t s{};
  s.struct_size = static_cast<uint32_t>(sizeof s);
  return s;
}

inline NodeStats to_stats(const keel_node_stats_t& s) noexcept {
  NodeStats o;
  o.peers = s.peers;
  o.accepted = s.accepted;
  o.dialed = s.dialed;
  o.handshakes = s.handshakes;
  o.frames_in = s.frames_in;
  o.frames_out = s.frames_out;
  o.bytes_in = s.bytes_in;
  o.bytes_out = s.bytes_out;
  o.pings_sent = s.pings_sent;
  o.pongs_received = s.pongs_received;
  o.cancelled_frames = s.cancelled_frames;
  o.refused_bad_mac = s.refused_bad_mac;
  o.refused_replay = s.refused_replay;
  o.refused_version = s.refused_version;
  o.refused_not_loopback = s.refused_not_loopback;
  o.refused_wrong_node = s.refused_wrong_node;
  o.handshake_timeouts = s.handshake_timeouts;
  o.malformed_frames = s.malformed_frames;
  o.oversized_frames = s.oversized_frames;
  o.unknown_types = s.unknown_types;
  o.heartbeat_timeouts = s.heartbeat_timeouts;
  o.outbound_overflows = s.outbound_overflows;
  o.resets = s.resets;
  o.closed_by_peer = s.closed_by_peer;
  o.closed_by_shutdown = s.closed_by_shutdown;
  o.refused_handshake_limit = s.refused_handshake_limit;
  o.replaced_connections = s.replaced_connections;
  return o;
}

/// The NUL-terminated string a C call writes into a buffer of the
/// caller's (keel_node_addr, keel_node_last_error), without the NUL. Asked
/// again with the size the call names as long as it answers
/// BUFFER_TOO_SMALL (the text may grow between two calls). These calls
/// carry no error object.
template <class Call>
Result<std::string> string_out(Call call, size_t first_cap) {
  std::string buf(first_cap, '\0');
  for (;;) {
    size_t len = 0;
    const keel_status_t st = call(buf.data(), buf.size(), &len);
    if (st == KEEL_STATUS_BUFFER_TOO_SMALL && len > buf.size()) {
      buf.resize(len);
      continue;
    }
    if (st != KEEL_STATUS_OK) {
      ErrorOut none;
      return none.take(st);
    }
    buf.resize(len > 0 ? len - 1 : 0);
    return buf;
  }
}

}  // namespace detail

/// A node of keel's authenticated transport (owns a keel_node_t): it
/// listens on one TCP address, dials peers with connect() and keeps a
/// connection to every peer that passed the handshake. The destructor
/// closes it (see close()). Const members are safe to call from many
/// threads at once; close(), moving and destruction must not race with
/// them, and must not happen in the node's own event handler (a Node
/// destroyed there leaks its node: see NodeEventHandler).
///
/// The Node owns its event handler and frees it only once the node's
/// threads are joined, so a handler never outlives its storage.
class Node : public detail::Handle<keel_node_t, detail::close_node> {
 public:
  /// Node() is empty: every call returns Status::Closed. explicit
  /// Node(keel_node_t* owned) takes ownership of a node opened through the
  /// C API (its user_data stays the caller's to keep alive until the Node
  /// is closed).
  using Handle::Handle;
  Node() noexcept = default;
  Node(Node&&) noexcept = default;
  /// Closes the node this one held (as the destructor does) and takes `o`'s.
  Node& operator=(Node&& o) noexcept {
    if (this != &o) {
      prepare_close();
      Handle::operator=(std::move(o));  // closes the node before its handler is freed below
      events_ = std::move(o.events_);
    }
    return *this;
  }
  /// Closes the node first, then frees its handler (members would go first).
  ~Node() {
    prepare_close();
    ptr_.reset();
  }

  /// Opens a node for `engine` (which must stay open until the node is
  /// closed): binds the listen address and starts the node's threads.
  /// Status::InvalidArgument for an option out of range (node_id 0, a
  /// secret shorter than 16 bytes, ...), Status::Io when the address cannot
  /// be bound, Status::Closed for an empty Engine. The handler, if any,
  /// moves into the Node.
  static Result<Node> open(const Engine& engine, NodeOptions opts) {
    if (!engine) return detail::empty_handle("keel::Engine");
    if (const auto& abi = detail::abi_once(); !abi) return abi.err();
    if (opts.secret_null_ || opts.secret2_null_) return detail::null_string_error();
    keel_node_options_t raw = opts.raw_;
    if (!opts.listen_.empty()) {
      if (opts.listen_.find('\0') != std::string::npos) {
        return Error(Status::InvalidArgument, "listen_addr contains a NUL byte");
      }
      raw.listen_addr = opts.listen_.c_str();
    }
    if (!opts.secret_.empty()) {
      raw.secret = opts.secret_.data();
      raw.secret_len = opts.secret_.size();
    }
    if (!opts.secret2_.empty()) {
      raw.secret2 = opts.secret2_.data();
      raw.secret2_len = opts.secret2_.size();
    }
    std::unique_ptr<detail::NodeEvents> events;
    if (opts.on_event_) {
      events = std::make_unique<detail::NodeEvents>(std::move(opts.on_event_));
      raw.on_event = &detail::NodeEvents::on_event;
      raw.user_data = events.get();
    }
    detail::ErrorOut err;
    keel_node_t* n = nullptr;
    const keel_status_t st = keel_node_open(engine.raw(), &raw, &n, err.out());
    // A failed open started no thread that could call the handler.
    if (st != KEEL_STATUS_OK) return err.take(st);
    return Node(n, std::move(events));
  }

  /// The address the node listens on, "ip:port" (the port picked when the
  /// option said 0).
  Result<std::string> addr() const {
    const detail::NodeCall call(events_.get());
    if (call.closed() || !ptr_) return detail::empty_handle("keel::Node");
    return detail::string_out(
        [this](char* buf, size_t cap, size_t* len) { return keel_node_addr(ptr_.get(), buf, cap, len); }, 64);
  }

  /// Dials peer `peer_id` at `addr` ("host:port") and runs the handshake;
  /// returns once the peer is ready. Status::Refused (the handshake refused
  /// the peer or the peer refused this node: the message says why),
  /// Status::InvalidArgument (peer_id 0 or this node's own, an address that
  /// does not resolve), Status::Io (connect failed), Status::Timeout,
  /// Status::Protocol, Status::Closed (the node is closing, or the peer
  /// closed the connection before the handshake finished),
  /// Status::Resource (out of descriptors, memory or threads).
  Result<void> connect(uint64_t peer_id, const std::string& addr) const {
    const detail::NodeCall call(events_.get());
    if (call.closed() || !ptr_) return detail::empty_handle("keel::Node");
    if (addr.find('\0') != std::string::npos) {
      return Error(Status::InvalidArgument, "peer address contains a NUL byte");
    }
    detail::ErrorOut err;
    return detail::check(keel_node_connect(ptr_.get(), peer_id, addr.c_str(), err.out()), err);
  }

  /// The counters now.
  Result<NodeStats> stats() const {
    const detail::NodeCall call(events_.get());
    if (call.closed() || !ptr_) return detail::empty_handle("keel::Node");
    keel_node_stats_t s = detail::node_stats_out();
    const keel_status_t st = keel_node_stats(ptr_.get(), &s);
    if (st != KEEL_STATUS_OK) {
      detail::ErrorOut none;  // this call carries no error object
      return none.take(st);
    }
    return detail::to_stats(s);
  }

  /// The text of the last error that ended a connection ("" when none).
  Result<std::string> last_error() const {
    const detail::NodeCall call(events_.get());
    if (call.closed() || !ptr_) return detail::empty_handle("keel::Node");
    return detail::string_out(
        [this](char* buf, size_t cap, size_t* len) { return keel_node_last_error(ptr_.get(), buf, cap, len); }, 64);
  }

  /// Closes the node: stops accepting, gives every connection up to
  /// close_timeout to send what is queued (the rest is cancelled and
  /// counted), closes the connections, joins every thread of the node and
  /// frees the event handler: no handler call runs after it returns.
  /// Returns the counters as they are at the end. The Node is empty
  /// afterwards. Status::Closed for an empty Node (there are no counters
  /// to return); Status::Busy from the node's own event handler (or C
  /// event callback, for a node taken from the C API), which leaves the
  /// node open.
  Result<NodeStats> close() {
    const auto own_handler = [] {
      return Error(Status::Busy, "keel::Node::close() cannot run in the node's own event handler");
    };
    if (events_ && detail::NodeEvents::running() == events_.get()) return own_handler();
    if (!ptr_) return detail::empty_handle("keel::Node");
    stop_handler_calls();
    keel_node_stats_t s = detail::node_stats_out();
    const keel_status_t st = keel_node_close(ptr_.get(), &s);
    // Nothing was closed: keel saw its own event callback, a C one of a
    // handle taken from the C API (the check above knows only the
    // wrapper's handler). The node stays open, so this Node keeps it.
    if (st == KEEL_STATUS_BUSY) return own_handler();
    (void)ptr_.release();  // freed by keel (also on the other errors)
    events_.reset();       // keel_node_close joined every thread that calls it
    if (st != KEEL_STATUS_OK) {
      detail::ErrorOut none;  // this call carries no error object
      return none.take(st);
    }
    return detail::to_stats(s);
  }

  /// Gives up ownership: the caller must close the node with
  /// keel_node_close(). The event handler, if any, is then never freed
  /// (keel may call it until that close, and cannot free it).
  [[nodiscard]] keel_node_t* release() noexcept {
    (void)events_.release();
    return ptr_.release();
  }

 private:
  Node(keel_node_t* owned, std::unique_ptr<detail::NodeEvents> events) noexcept
      : Handle(owned), events_(std::move(events)) {}

  /// Before the destructor or a move assignment closes the node. In the
  /// node's own handler keel refuses the close (BUSY, which
  /// detail::close_node reports) and its threads, one of them running the
  /// handler now, go on calling it, so the handler is leaked with the
  /// node, never freed under them (nothing is closed, so there are no
  /// handler calls to stop either). Elsewhere the handler's calls on this
  /// Node stop first.
  void prepare_close() noexcept {
    if (events_ && detail::NodeEvents::running() == events_.get()) {
      (void)events_.release();
    } else {
      stop_handler_calls();
    }
  }

  /// From now on the handler's calls on this Node answer Status::Closed;
  /// waits for those in flight (see detail::NodeEvents).
  void stop_handler_calls() noexcept {
    if (!events_) return;
    std::unique_lock<std::mutex> lock(events_->mu);
    events_->closing = true;
    events_->drained.wait(lock, [this] { return events_->calls == 0; });
  }

  // Transfer::expect() and start() reach the node through its handle too,
  // so they take the same guard as the members above (detail::NodeCall).
  friend class Transfer;

  std::unique_ptr<detail::NodeEvents> events_;
};

// ---- shard transfer -----------------------------------------------------------

/// How a transfer sends the shard (keel_transfer_options_t.method).
enum class TransferMethod : uint32_t {
  Snapshot = KEEL_TRANSFER_SNAPSHOT,  ///< a consistent snapshot, then the WAL after it
  WalDelta = KEEL_TRANSFER_WAL_DELTA, ///< only the records the receiver lacks (falls back to a snapshot)
};

/// How a transfer ends once the receiver caught up (docs/TRANSFER.md).
enum class FinishMode : uint32_t {
  None = KEEL_TRANSFER_FINISH_NONE,          ///< auto_finish only: the host calls Transfer::finish()
  Copy = KEEL_TRANSFER_FINISH_COPY,          ///< the receiver gets a copy; the source stays writable
  HandOver = KEEL_TRANSFER_FINISH_HAND_OVER, ///< the receiver owns the shard; the source answers Moved
  Forward = KEEL_TRANSFER_FINISH_FORWARD,    ///< each later source write reaches the receiver before it returns
};

/// Where a transfer is (KEEL_TRANSFER_CONNECTING ... KEEL_TRANSFER_CANCELLED).
enum class TransferStage : uint32_t {
  Connecting = KEEL_TRANSFER_CONNECTING,
  Backfill = KEEL_TRANSFER_BACKFILL,
  CatchingUp = KEEL_TRANSFER_CATCHING_UP,
  WaitingFinish = KEEL_TRANSFER_WAITING_FINISH,
  Draining = KEEL_TRANSFER_DRAINING,
  Forwarding = KEEL_TRANSFER_FORWARDING,
  Done = KEEL_TRANSFER_DONE,
  Failed = KEEL_TRANSFER_FAILED,
  Cancelled = KEEL_TRANSFER_CANCELLED,
};

/// A transfer's progress (keel_transfer_progress_t).
struct TransferProgress {
  TransferStage stage = TransferStage::Connecting;
  bool snapshot = false;     ///< the shard goes (went) as a snapshot
  bool handed_over = false;  ///< the shard was handed over
  uint64_t ops_sent = 0;     ///< WAL records sent and acknowledged
  uint64_t ops_total = 0;    ///< ops_sent plus those still to send (grows with writes)
  uint64_t entries_sent = 0; ///< snapshot entries sent and acknowledged
  uint64_t bytes_sent = 0;
  uint64_t batches = 0;
  uint64_t receiver_had = 0; ///< the receiver's version at the start; 0 with none, and always for a snapshot
  uint64_t last_version = 0; ///< the last version the receiver acknowledged
  std::chrono::microseconds read_time{0}, send_time{0}, final_hold{0};
  uint64_t max_batches_in_memory = 0;
};

/// The stage, and the error that failed the transfer (Failed only).
struct TransferStatus {
  TransferStage stage = TransferStage::Connecting;
  std::optional<Error> error;
};

/// Progress handler: runs on the transfer's own keel thread after every
/// acknowledged batch and at every change of stage (the last call when the
/// transfer is over). It must be quick, must not throw (the bridge is
/// noexcept: an escaping exception calls std::terminate) and must not
/// wait() for, or destroy, its own Transfer: both would wait for the
/// thread the handler runs on. wait() answers Status::Busy there; a
/// Transfer destroyed (or assigned to) there cannot free its transfer, so
/// the transfer runs on to its end and it and the handler are leaked,
/// never freed (a line on stderr says so). Destroy a Transfer on another
/// thread, e.g. one the handler wakes.
using TransferProgressHandler = std::function<void(const TransferProgress&)>;

/// Options of Transfer::start(): a copyable builder over
/// keel_transfer_options_t with the library defaults (a snapshot, no
/// auto-finish, 1024 records or 1 MiB per batch, 30 s ACK timeout, 6
/// retries of a lost step after 100 ms doubling up to 5 s).
class TransferOptions {
 public:
  TransferOptions() noexcept { keel_transfer_options_init_sized(&raw_, sizeof raw_); }  // cannot fail

  TransferOptions& method(TransferMethod m) noexcept { raw_.method = static_cast<uint32_t>(m); return *this; }
  /// Finish with `m` as soon as the receiver caught up (FinishMode::None:
  /// the host calls Transfer::finish()).
  TransferOptions& auto_finish(FinishMode m) noexcept { raw_.auto_finish = static_cast<uint32_t>(m); return *this; }
  TransferOptions& max_batch_records(uint32_t n) noexcept { raw_.max_batch_records = n; return *this; }
  TransferOptions& max_batch_bytes(uint64_t n) noexcept { raw_.max_batch_bytes = n; return *this; }
  /// The wait for the receiver's answer to one step, 1 ms to a day.
  TransferOptions& ack_timeout(detail::Millis t) noexcept { raw_.ack_timeout_ms = detail::clamp_ms(t); return *this; }
  /// Retries of one step the transport lost, 1 to 1000 (0: the default).
  TransferOptions& max_retries(uint32_t n) noexcept { raw_.max_retries = n; return *this; }
  /// A lost step fails the transfer at once.
  TransferOptions& no_retries() noexcept { raw_.max_retries = KEEL_TRANSFER_NO_RETRIES; return *this; }
  /// The wait before a step's first retry, doubled at each retry up to
  /// `max`, at most a day (0 ms: each default).
  TransferOptions& backoff(detail::Millis first, detail::Millis max) noexcept {
    raw_.first_backoff_ms = detail::clamp_ms(first);
    raw_.max_backoff_ms = detail::clamp_ms(max);
    return *this;
  }
  /// Read a batch only after the one before was acknowledged, instead of
  /// reading the next batch while the current one is sent: the baseline a
  /// benchmark compares the pipeline with.
  TransferOptions& sequential(bool on = true) noexcept {
    raw_.sequential = on ? KEEL_TRANSFER_SEQUENTIAL : 0;
    return *this;
  }
  /// The handler moves into the Transfer, which frees it only once the
  /// transfer's thread has ended.
  TransferOptions& on_progress(TransferProgressHandler h) { on_progress_ = std::move(h); return *this; }

  /// The C struct, for fields this wrapper does not know yet (as the
  /// other options classes give theirs). Transfer::start() starts with a
  /// copy of it in which on_progress/user_data are its bridge when
  /// on_progress() holds a handler; otherwise they are used as they are.
  keel_transfer_options_t& raw() noexcept { return raw_; }
  const keel_transfer_options_t& raw() const noexcept { return raw_; }

 private:
  friend class Transfer;
  keel_transfer_options_t raw_{};
  TransferProgressHandler on_progress_;
};

namespace detail {
inline void free_transfer(keel_transfer_t* t) noexcept {
  report_leak(keel_transfer_free(t),
              "keel::Transfer destroyed in its own progress handler: keel cannot free it there, so the transfer, "
              "its thread and its handler are leaked (destroy it from another thread)");
}

/// A keel_transfer_progress_t as its producer wrote it: only the first
/// `struct_size` bytes are read (docs/FFI.md, "Versioned structs"), since
/// a library built with an older header passes the progress callback a
/// smaller struct, and the memory past it is not the struct's. They are
/// copied into a zeroed struct, so every field past them reads as zero,
/// which is each TransferProgress field's default (Connecting, false, 0).
inline TransferProgress to_progress(const keel_transfer_progress_t* given) noexcept {
  keel_transfer_progress_t p{};
  std::memcpy(&p, given, std::min<size_t>(given->struct_size, sizeof p));
  TransferProgress o;
  o.stage = static_cast<TransferStage>(p.stage);
  o.snapshot = p.snapshot != 0;
  o.handed_over = p.handed_over != 0;
  o.ops_sent = p.ops_sent;
  o.ops_total = p.ops_total;
  o.entries_sent = p.entries_sent;
  o.bytes_sent = p.bytes_sent;
  o.batches = p.batches;
  o.receiver_had = p.receiver_had;
  o.last_version = p.last_version;
  o.read_time = std::chrono::microseconds(p.read_time_us);
  o.send_time = std::chrono::microseconds(p.send_time_us);
  o.final_hold = std::chrono::microseconds(p.final_hold_us);
  o.max_batches_in_memory = p.max_batches_in_memory;
  return o;
}

/// The C callback's user data: the host's handler, owned by its Transfer.
struct TransferEvents {
  TransferProgressHandler fn;

  /// The TransferEvents whose handler runs on this thread now (nullptr
  /// when none), so that a Transfer destroyed there can tell that keel's
  /// thread is running its handler.
  static const TransferEvents*& running() noexcept {
    static thread_local const TransferEvents* current = nullptr;
    return current;
  }

  static void on_progress(void* user, const keel_transfer_progress_t* p) noexcept {
    const auto* self = static_cast<const TransferEvents*>(user);
    const TransferEvents* outer = std::exchange(running(), self);  // restored as NodeEvents restores it
    self->fn(to_progress(p));
    running() = outer;
  }
};
}  // namespace detail

/// A shard transfer running on its own keel thread (owns a
/// keel_transfer_t). Move-only; the destructor cancels a transfer that is
/// not over, waits for its thread and then frees the progress handler.
/// Const members are safe from many threads at once. Destroying it (or
/// assigning to it) in its own progress handler is forbidden: see
/// TransferProgressHandler.
class Transfer : public detail::Handle<keel_transfer_t, detail::free_transfer> {
 public:
  using Handle::Handle;
  Transfer() noexcept = default;
  Transfer(Transfer&&) noexcept = default;
  Transfer& operator=(Transfer&& o) noexcept {
    if (this != &o) {
      keep_running_handler();
      Handle::operator=(std::move(o));  // frees the transfer before its handler below
      events_ = std::move(o.events_);
    }
    return *this;
  }
  ~Transfer() {
    keep_running_handler();
    ptr_.reset();
  }

  /// Announces on `node` that peer `from_peer` may send shard `shard_id`
  /// there (used up once a transfer of it finishes). Status::InvalidArgument
  /// for from_peer 0, Status::Closed for an empty Node, or from the
  /// node's own event handler once the node is closing.
  static Result<void> expect(const Node& node, uint32_t shard_id, uint64_t from_peer) {
    // As in Node's own members: from the node's handler the call is counted
    // (its close waits for it before it empties the Node) or refused once
    // the close began (the Node may already hold another node's handle).
    const detail::NodeCall call(node.events_.get());
    if (call.closed() || !node) return detail::empty_handle("keel::Node");
    const keel_status_t st = keel_transfer_expect(node.raw(), shard_id, from_peer);
    detail::ErrorOut none;  // this call carries no error object
    return detail::check(st, none);
  }

  /// Starts sending `shard` (the node's engine's open shard `shard_id`)
  /// from `node` to peer `peer` on a keel thread; returns at once. The
  /// node and the shard must outlive the Transfer.
  /// Status::InvalidArgument (an option out of range, `shard` not that
  /// engine's open shard `shard_id`, `peer` 0 or the node itself), Status::Busy (the node sends max_concurrent_transfers
  /// already), Status::Closed (an empty Node or Shard, or a call from the
  /// node's own event handler once the node is closing).
  static Result<Transfer> start(const Node& node, const Shard& shard, uint32_t shard_id, uint64_t peer,
                                TransferOptions opts = TransferOptions()) {
    const detail::NodeCall call(node.events_.get());  // as in expect()
    if (call.closed() || !node) return detail::empty_handle("keel::Node");
    if (!shard) return detail::empty_handle("keel::Shard");
    keel_transfer_options_t raw = opts.raw_;
    std::unique_ptr<detail::TransferEvents> events;
    if (opts.on_progress_) {
      events = std::make_unique<detail::TransferEvents>(detail::TransferEvents{std::move(opts.on_progress_)});
      raw.on_progress = &detail::TransferEvents::on_progress;
      raw.user_data = events.get();
    }
    detail::ErrorOut err;
    keel_transfer_t* t = nullptr;
    const keel_status_t st = keel_transfer_start(node.raw(), shard.raw(), shard_id, peer, &raw, &t, err.out());
    if (st != KEEL_STATUS_OK) return err.take(st);
    return Transfer(t, std::move(events));
  }

  /// Asks the transfer to finish with `mode` once caught up.
  /// Status::InvalidArgument (FinishMode::None, the transfer is over, or it
  /// forwards and `mode` is not a hand-over), Status::Busy (a finish was
  /// asked for already).
  Result<void> finish(FinishMode mode) const {
    if (!ptr_) return detail::empty_handle("keel::Transfer");
    detail::ErrorOut err;
    return detail::check(keel_transfer_finish(ptr_.get(), static_cast<uint32_t>(mode), err.out()), err);
  }

  /// The host confirms a hand-over: the source's shard (refusing writes
  /// with Status::Moved since) is closed, so every Shard on it answers
  /// Status::Closed, and dropped from the node's engine with its files.
  /// Status::InvalidArgument unless the transfer is done with a hand-over,
  /// Status::NotFound once confirmed.
  Result<void> confirm_hand_over() const {
    if (!ptr_) return detail::empty_handle("keel::Transfer");
    detail::ErrorOut err;
    return detail::check(keel_transfer_confirm_hand_over(ptr_.get(), err.out()), err);
  }

  /// Stops the transfer at its next batch boundary or ACK wait; the
  /// receiver's shard stays incoming and a later transfer resumes it.
  Result<void> cancel() const {
    if (!ptr_) return detail::empty_handle("keel::Transfer");
    detail::ErrorOut none;
    return detail::check(keel_transfer_cancel(ptr_.get()), none);
  }

  Result<TransferStatus> status() const {
    if (!ptr_) return detail::empty_handle("keel::Transfer");
    detail::ErrorOut err;
    uint32_t stage = 0;
    const keel_status_t st = keel_transfer_status(ptr_.get(), &stage, err.out());
    if (st != KEEL_STATUS_OK) return err.take(st);
    TransferStatus out;
    out.stage = static_cast<TransferStage>(stage);
    if (err.ptr) out.error = err.take(keel_error_code(err.ptr));
    return out;
  }

  Result<TransferProgress> progress() const {
    if (!ptr_) return detail::empty_handle("keel::Transfer");
    keel_transfer_progress_t p{};
    p.struct_size = static_cast<uint32_t>(sizeof p);
    const keel_status_t st = keel_transfer_progress(ptr_.get(), &p);
    detail::ErrorOut none;
    if (st != KEEL_STATUS_OK) return none.take(st);
    return detail::to_progress(&p);
  }

  /// Waits until the transfer is settled (done, failed, cancelled, or
  /// forwarding with no hand-over asked for); Status::Timeout when
  /// `timeout` passed first. status() says how it went.
  Result<void> wait(detail::Millis timeout) const {
    if (!ptr_) return detail::empty_handle("keel::Transfer");
    const uint64_t ms = timeout.value.count() < 0 ? 0 : static_cast<uint64_t>(timeout.value.count());
    detail::ErrorOut none;
    return detail::check(keel_transfer_wait(ptr_.get(), ms == KEEL_TRANSFER_WAIT_FOREVER ? ms - 1 : ms), none);
  }
  /// Waits without a time limit.
  Result<void> wait() const {
    if (!ptr_) return detail::empty_handle("keel::Transfer");
    detail::ErrorOut none;
    return detail::check(keel_transfer_wait(ptr_.get(), KEEL_TRANSFER_WAIT_FOREVER), none);
  }

  /// Gives up ownership: the caller frees it with keel_transfer_free().
  /// The progress handler, if any, is then never freed.
  [[nodiscard]] keel_transfer_t* release() noexcept {
    (void)events_.release();
    return ptr_.release();
  }

 private:
  Transfer(keel_transfer_t* owned, std::unique_ptr<detail::TransferEvents> events) noexcept
      : Handle(owned), events_(std::move(events)) {}

  /// Before the transfer is freed: in its own progress handler keel
  /// refuses the free (BUSY, which detail::free_transfer reports) and its
  /// thread, running the handler now, calls it again until the transfer
  /// is over, so the handler is leaked with the transfer, never freed
  /// under that thread.
  void keep_running_handler() noexcept {
    if (events_ && detail::TransferEvents::running() == events_.get()) (void)events_.release();
  }

  std::unique_ptr<detail::TransferEvents> events_;
};

/// The content digest of `shard`: SHA-256 over its live keys with their
/// kind, bytes and version (docs/TRANSFER.md, "Shard digest").
inline Result<std::array<uint8_t, 32>> shard_digest(const Shard& shard) {
  if (!shard) return detail::empty_handle("keel::Shard");
  std::array<uint8_t, 32> out{};
  detail::ErrorOut err;
  const keel_status_t st = keel_shard_digest(shard.raw(), out.data(), err.out());
  if (st != KEEL_STATUS_OK) return err.take(st);
  return out;
}

}  // namespace keel

#endif  // KEEL_HPP
