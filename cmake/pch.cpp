// An empty translation unit: the target that holds the precompiled LibTorch header for the executables of a tree
// that links a prebuilt libfourierft (FOURIERFT_PREBUILT_LIBRARY, CMakeLists.txt).
