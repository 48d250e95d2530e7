# tests/tokenizer.cmake: Qwen's tokenizer (io/tokenizer.c) against the `tiktoken`
# package. tokenizer_tool exposes the C tokenizer as a command; the Python test
# makes a virtual environment with tiktoken from PyPI once (in the build tree,
# reused by benchmarks/bench_tokenizer.py), trains a small byte-level BPE on
# generated multilingual text, and compares ids, decoding and load errors.
# Files land in VLM_TEST_WORK/tokenizer/. A failing pip install fails the test.
add_executable(tokenizer_tool tokenizer/tokenizer_tool.c)
target_link_libraries(tokenizer_tool PRIVATE vlm)

vlm_py_test(tokenizer_tiktoken tokenizer/test_tokenizer.py $<TARGET_FILE:tokenizer_tool>
  ${CMAKE_BINARY_DIR}/tokenizer-venv)
set_tests_properties(tokenizer_tiktoken PROPERTIES TIMEOUT 900)
