# Decides whether the CUDA backend is built (VIDGRAD_CUDA = AUTO | ON | OFF) and, when it
# is, enables the CUDA language for sm_90 (+ PTX), finds the toolkit and cuDNN, and makes
# the interface target vidgrad_cudnn. Sets VIDGRAD_WITH_CUDA.
set(VIDGRAD_WITH_CUDA OFF)
if(VIDGRAD_CUDA STREQUAL "OFF")
  message(STATUS "vidgrad: CUDA backend off (VIDGRAD_CUDA=OFF)")
  return()
endif()

# Debian's CUDA toolkit lives in /usr/local/cuda; nvcc is not always on PATH for CMake.
if(NOT CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX} AND EXISTS /usr/local/cuda/bin/nvcc)
  set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
endif()
include(CheckLanguage)
check_language(CUDA)

set(_vidgrad_cuda_missing "")
if(NOT CMAKE_CUDA_COMPILER)
  set(_vidgrad_cuda_missing "nvcc")
else()
  # "90" is sm_90 machine code plus compute_90 PTX, so newer GPUs can JIT it.
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
    set(CMAKE_CUDA_ARCHITECTURES 90)
  endif()
  enable_language(CUDA)
  # CMake 3.25 predates nvcc's C++20 support and would refuse cxx_std_20 for CUDA sources.
  if(NOT CMAKE_CUDA20_STANDARD_COMPILE_OPTION)
    set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION "-std=c++20")
    set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION "-std=c++20")
  endif()
  find_package(CUDAToolkit)
  if(NOT CUDAToolkit_FOUND)
    set(_vidgrad_cuda_missing "the CUDA toolkit")
  else()
    find_path(VIDGRAD_CUDNN_INCLUDE_DIR cudnn.h HINTS ${CUDAToolkit_INCLUDE_DIRS} ENV CUDNN_ROOT PATH_SUFFIXES include)
    find_library(VIDGRAD_CUDNN_LIBRARY cudnn HINTS ${CUDAToolkit_LIBRARY_DIR} "${CUDAToolkit_LIBRARY_ROOT}/lib64"
                 ENV CUDNN_ROOT PATH_SUFFIXES lib64 lib)
    if(NOT VIDGRAD_CUDNN_INCLUDE_DIR OR NOT VIDGRAD_CUDNN_LIBRARY)
      set(_vidgrad_cuda_missing "cuDNN (cudnn.h / libcudnn)")
    endif()
  endif()
endif()

if(_vidgrad_cuda_missing)
  if(VIDGRAD_CUDA STREQUAL "ON")
    message(FATAL_ERROR "vidgrad: VIDGRAD_CUDA=ON but ${_vidgrad_cuda_missing} was not found")
  endif()
  message(STATUS "vidgrad: CUDA backend off (${_vidgrad_cuda_missing} not found)")
  return()
endif()

set(VIDGRAD_WITH_CUDA ON)
add_library(vidgrad_cudnn INTERFACE)
target_include_directories(vidgrad_cudnn INTERFACE "$<BUILD_INTERFACE:${VIDGRAD_CUDNN_INCLUDE_DIR}>")
target_link_libraries(vidgrad_cudnn INTERFACE "$<BUILD_INTERFACE:${VIDGRAD_CUDNN_LIBRARY}>"
                                              "$<INSTALL_INTERFACE:${VIDGRAD_CUDNN_LIBRARY}>")
message(STATUS "vidgrad: CUDA backend on (CUDA ${CUDAToolkit_VERSION}, architectures ${CMAKE_CUDA_ARCHITECTURES}, "
               "cuDNN ${VIDGRAD_CUDNN_LIBRARY})")
