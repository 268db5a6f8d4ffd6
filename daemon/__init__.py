"""cohere-transcribe-daemon: live captions with Cohere Transcribe through Core ML or ONNX Runtime."""
