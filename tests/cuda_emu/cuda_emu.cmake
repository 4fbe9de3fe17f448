# The CUDA backend under CPU emulation (docs/CUDA.md, "The emulation"): the real cuda/*.cu, rewritten
# by cuda_emu.py (launches, __shared__) and compiled as C++ for the CPU with cuda_emu.h first, cuda/*.c
# as they are, all against the emulated runtime and cuBLAS of emu_runtime.cpp, under AddressSanitizer.
# loratune_emu is the library with this backend as "cuda"; the *_cuda_emu test programs link it (label
# cuda_emu: tests/run.sh runs them in a stage of their own). Test code only: nothing here is installed.
option(LT_CUDA_EMU "Build the test programs that run the CUDA backend under CPU emulation" ON)
if(NOT LT_CUDA_EMU OR NOT Python3_FOUND)
  message(STATUS "libloratune: CUDA emulation tests OFF")
  return()
endif()
enable_language(CXX)
message(STATUS "libloratune: CUDA emulation tests ON")

set(EMU ${CMAKE_CURRENT_SOURCE_DIR}/cuda_emu)
set(EMU_GEN ${CMAKE_CURRENT_BINARY_DIR}/cuda_emu_gen)
file(GLOB EMU_CU CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/cuda/*.cu ${PROJECT_SOURCE_DIR}/cuda/*.cuh)
file(GLOB EMU_C CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/cuda/*.c)
set(EMU_SOURCES)
set(EMU_HEADERS)
foreach(f ${EMU_CU})
  get_filename_component(n ${f} NAME)
  if(n MATCHES "\\.cuh$")
    set(out ${EMU_GEN}/cuda/${n}) # found before the original by the includes of the translated sources
    list(APPEND EMU_HEADERS ${out})
  else()
    set(out ${EMU_GEN}/cuda/${n}.cpp)
    list(APPEND EMU_SOURCES ${out})
  endif()
  add_custom_command(OUTPUT ${out} COMMAND ${Python3_EXECUTABLE} ${EMU}/cuda_emu.py ${f} ${out}
    DEPENDS ${f} ${EMU}/cuda_emu.py COMMENT "cuda_emu: ${n}" VERBATIM)
endforeach()

set(EMU_FLAGS -g -O1 -fno-omit-frame-pointer -ffp-contract=off -fsanitize=address)
add_library(lt_cuda_emu STATIC ${EMU_SOURCES} ${EMU_HEADERS} ${EMU_C} ${EMU}/emu_runtime.cpp)
set_target_properties(lt_cuda_emu PROPERTIES CXX_STANDARD 17 CXX_STANDARD_REQUIRED ON)
target_include_directories(lt_cuda_emu BEFORE PRIVATE ${EMU_GEN})
target_include_directories(lt_cuda_emu PUBLIC ${EMU}/include ${EMU}
  PRIVATE ${PROJECT_SOURCE_DIR}/src ${PROJECT_SOURCE_DIR} ${PROJECT_SOURCE_DIR}/include)
target_compile_definitions(lt_cuda_emu PRIVATE LT_BUILDING_LIBRARY _GNU_SOURCE)
target_compile_options(lt_cuda_emu PRIVATE ${EMU_FLAGS} $<$<COMPILE_LANGUAGE:C>:${LT_WARN}>
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wno-unknown-pragmas -Wno-unused-parameter -Wno-unused-function>)
set_source_files_properties(${EMU_SOURCES} PROPERTIES COMPILE_OPTIONS "-include;${EMU}/cuda_emu.h")
target_link_options(lt_cuda_emu INTERFACE -fsanitize=address)
find_package(Threads REQUIRED)
target_link_libraries(lt_cuda_emu PUBLIC Threads::Threads m)

# The registry again, naming the (emulated) CUDA backend; every other folder's objects as they are.
set(S ${PROJECT_SOURCE_DIR}/src)
add_library(lt_core_emu OBJECT ${LT_CORE_SOURCES})
target_include_directories(lt_core_emu PRIVATE ${S} ${PROJECT_SOURCE_DIR})
target_compile_definitions(lt_core_emu PRIVATE LT_HAVE_CUDA)
target_link_libraries(lt_core_emu PRIVATE lt_base)
set_target_properties(lt_core_emu PROPERTIES C_VISIBILITY_PRESET hidden)
set(EMU_OBJECTS $<TARGET_OBJECTS:lt_core_emu>)
foreach(t ${LT_FOLDERS})
  if(NOT t STREQUAL "lt_cuda" AND NOT t STREQUAL "lt_core")
    list(APPEND EMU_OBJECTS $<TARGET_OBJECTS:${t}>)
  endif()
endforeach()
add_library(loratune_emu STATIC ${EMU_OBJECTS})
target_include_directories(loratune_emu PUBLIC ${PROJECT_SOURCE_DIR}/include)
target_link_libraries(loratune_emu PUBLIC lt_cuda_emu PkgConfig::JANSSON PkgConfig::PCRE2 PkgConfig::UTF8PROC
  PkgConfig::OPENBLAS OpenMP::OpenMP_C m)

# A test program on the emulated backend: test_backend_ops runs its cases on it as the backend
# "cuda-emu" (LT_TEST_CUDA_EMU); a model suite runs on it through LT_TEST_BACKEND=cuda.
function(lt_emu_test name src)
  lt_test(${name} ${src})
  target_compile_definitions(${name} PRIVATE LT_TEST_CUDA_EMU)
  target_include_directories(${name} PRIVATE ${EMU})
  target_link_libraries(${name} PRIVATE loratune_emu PkgConfig::CHECK)
  set_tests_properties(${name} PROPERTIES LABELS cuda_emu ENVIRONMENT
    "CK_DEFAULT_TIMEOUT=900;LT_TEST_BACKEND=cuda;LT_CUDA_SYNC=1;LT_TEST_QUICK=1;ASAN_OPTIONS=detect_leaks=1")
endfunction()
lt_emu_test(test_backend_ops_cuda_emu ${CMAKE_CURRENT_SOURCE_DIR}/test_backend_ops.c)

# The model suites on the emulated backend (LT_TEST_BACKEND=cuda through the registry of loratune_emu):
# label cuda_emu_models, run by hand or by tests/gpu.sh, not in CI's emulation stage (docs/CUDA.md).
foreach(suite lora qlora families objectives)
  lt_emu_test(test_${suite}_cuda_emu ${CMAKE_CURRENT_SOURCE_DIR}/test_${suite}.c)
  set_tests_properties(test_${suite}_cuda_emu PROPERTIES LABELS cuda_emu_models)
endforeach()

# The launch configurations at the bench-8b shapes against the limits of sm_90, sm_80 and a 99 KiB part
# (the emulation's dry run: nothing executes). Label cuda_emu: CI's emulation stage.
lt_emu_test(test_cuda_launch_bounds ${EMU}/test_cuda_launch_bounds.c)
