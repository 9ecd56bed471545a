"""The compressor layer in a few lines (README "Python API"); runs on the real default model."""

from memrag import Compressor, CompressorConfig, GenerationOptions
from memrag.models import load_base_model
from memrag.prompts import ANSWER_STOP, qa_parts

# The base model: an embedded name, a Hugging Face id, or a local path; device and dtype explicit.
base = load_base_model("gemma-3-270m", device="cpu", dtype="float32")

# A fresh (untrained) compressor; Compressor.from_pretrained(DIR) loads a trained one.
compressor = Compressor(base, CompressorConfig(base_model="gemma-3-270m", segment_length=128, compression_rate=4))

passage = "The Eiffel Tower was completed in 1889 for the World's Fair in Paris."
(slots,) = compressor.compress([passage])          # one Slots per text
print(slots.tensor.shape, slots.segment_slot_counts)  # (ceil(tokens / 4), 640)

# A prompt is a list of parts: text, Slots (spliced as input embeddings) or Task markers.
prompt = qa_parts([slots], "When was the tower completed?")
options = GenerationOptions(max_new_tokens=16, stop=ANSWER_STOP)  # greedy; temperature>0 samples
print(compressor.generate([prompt], options)[0].text)            # batches of prompts work too
for chunk in compressor.stream(prompt, options):                 # a token iterator
    print(chunk, end="")

compressor.save_pretrained("my-compressor")        # config, LoRA adapter, embeddings; no base weights
same = Compressor.from_pretrained("my-compressor")  # loads its own copy of the base model
assert same.fingerprint == compressor.fingerprint
