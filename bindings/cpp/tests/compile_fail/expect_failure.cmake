# Compiles SRC with -D${MACRO} and passes only if the compiler fails AND its
# diagnostics match REGEX (so an unrelated error cannot make the test pass).
# Usage: cmake -DCXX=... -DKEEL_ROOT=... -DSRC=... -DMACRO=... -DREGEX=... -P expect_failure.cmake
get_filename_component(bindings "${SRC}" DIRECTORY)
get_filename_component(bindings "${bindings}/../.." ABSOLUTE)
execute_process(
  COMMAND "${CXX}" -std=c++17 -Wall -Wextra -Werror -pedantic -fsyntax-only
          "-I${KEEL_ROOT}/include" "-I${bindings}" "-D${MACRO}" "${SRC}"
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(rc EQUAL 0)
  message(FATAL_ERROR "${MACRO}: the misuse compiled, but the API must reject it")
endif()
if(NOT "${out}${err}" MATCHES "${REGEX}")
  message(FATAL_ERROR "${MACRO}: failed to compile, but not with a diagnostic matching '${REGEX}':\n${out}${err}")
endif()
message(STATUS "${MACRO}: rejected as expected")
