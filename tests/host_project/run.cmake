# cmake -DLT_SRC=<repo> -DLT_WORK=<dir> -DLT_GENERATOR=<generator> -P run.cmake
# Configures, builds and runs tests/host_project in LT_WORK; fails on any error.
file(REMOVE_RECURSE ${LT_WORK})
foreach(step
    "${CMAKE_COMMAND};-S;${CMAKE_CURRENT_LIST_DIR};-B;${LT_WORK};-G;${LT_GENERATOR};-DLT_SRC=${LT_SRC};-DCMAKE_BUILD_TYPE=Release"
    "${CMAKE_COMMAND};--build;${LT_WORK};--target;host"
    "${LT_WORK}/host")
  execute_process(COMMAND ${step} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "host project: `${step}` failed (${rc})")
  endif()
endforeach()
