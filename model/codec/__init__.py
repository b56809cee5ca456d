"""The speech codec: 16 kHz audio <-> 12.5 Hz frames of G FSQ codes, with a streaming decoder.

```python
from model.codec import SpeechCodec, load_codec
codec = load_codec()                 # the shipped checkpoint (AssetError if none)
codes = codec.encode(audio)          # [B, T] float at 16 kHz -> [B, ceil(T / 1280), G] long
audio = codec.decode(codes)          # [B, F, G] -> [B, F * 1280]
dec = codec.stream_decoder(); dec.push(codes[0, :3]); dec.push(codes[0, 3:]); dec.flush()
```
"""

from model.codec.codec import CHECKPOINT, CodecConfig, SpeechCodec, StreamDecoder, load_codec, save_codec

__all__ = ["CHECKPOINT", "CodecConfig", "SpeechCodec", "StreamDecoder", "load_codec", "save_codec"]
