# Every function keel.h declares is used by keel.hpp or named in its "Not
# wrapped" paragraph, so a C function added later cannot be left out of
# the C++ wrapper without a word.
# Usage: cmake -DHEADER=include/keel.h -DWRAPPER=bindings/cpp/keel.hpp -P coverage.cmake
file(STRINGS "${HEADER}" decls REGEX "^[a-z][a-z_ ]*[ *]keel_[a-z0-9_]+\\(")
file(READ "${WRAPPER}" wrapper)
set(missing "")
set(count 0)
foreach(decl IN LISTS decls)
  string(REGEX MATCH "keel_[a-z0-9_]+\\(" name "${decl}")
  string(REGEX REPLACE "\\($" "" name "${name}")
  math(EXPR count "${count} + 1")
  # A whole word: keel_shard_get must not pass for keel_shard_get_ex.
  if(NOT wrapper MATCHES "[^a-z0-9_]${name}[^a-z0-9_]")
    list(APPEND missing "${name}")
  endif()
endforeach()
if(count LESS 100)
  message(FATAL_ERROR "found only ${count} function declarations in ${HEADER}: the pattern no longer matches the header")
endif()
if(missing)
  string(REPLACE ";" "\n  " missing "${missing}")
  message(FATAL_ERROR "keel.hpp neither uses nor names these functions of keel.h (wrap them, or list them under \"Not wrapped\" with the reason):\n  ${missing}")
endif()
message(STATUS "keel.hpp covers all ${count} functions of keel.h")
