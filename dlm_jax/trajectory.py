"""Pictures of an unmasking trajectory: a terminal replay, an HTML page, a GIF.

Input is the history returned by `generate(..., return_history=True)` for one row: the canvas
after every step. Each frame marks every generated position as a mask (drawn as a block), a
token decoded at this step (highlighted) or one decoded earlier. Presentation only.
"""

import html
import json
import sys
import time

import numpy as np

MASK_GLYPH = "\u2588"  # a full block stands for a mask token


def frames(tokenizer, history, initial, prompt_length, mask_id):
    """[(piece, state)] per frame, states 'prompt' | 'mask' | 'new' | 'old'; frame 0 is the
    initial canvas (the prompt and all masks)."""
    canvases = [np.asarray(initial)] + [np.asarray(h) for h in history]
    pieces = {}

    def piece(token):
        if token not in pieces:
            pieces[token] = tokenizer.decode([int(token)]) if tokenizer is not None else f" {token}"
        return pieces[token]

    out, before = [], canvases[0]
    for canvas in canvases:
        frame = []
        for pos, token in enumerate(canvas):
            if token == mask_id:
                frame.append((MASK_GLYPH, "mask"))
            elif pos < prompt_length and before[pos] == token and initial[pos] == token:
                frame.append((piece(token), "prompt"))
            else:
                frame.append((piece(token), "new" if before[pos] != token else "old"))
        out.append(frame)
        before = canvas
    return out


def show(frame_list, *, delay=0.15, stream=sys.stdout):
    """Replay the frames in the terminal: masks as blocks, new tokens in reverse video."""
    styles = {"prompt": "\x1b[1m{}\x1b[0m", "mask": "\x1b[2m{}\x1b[0m", "new": "\x1b[7;32m{}\x1b[0m", "old": "{}"}
    for i, frame in enumerate(frame_list):
        text = "".join(styles[state].format(p) for p, state in frame)
        stream.write(f"\x1b[2J\x1b[Hstep {i}/{len(frame_list) - 1}\n\n{text}\n")
        stream.flush()
        time.sleep(delay)


def write_html(path, frame_list, *, title="dlm-jax unmasking trajectory"):
    """A self-contained page with a slider and a play button replaying the steps."""
    data = json.dumps([[[p, s] for p, s in f] for f in frame_list])
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 60em; }}
#canvas {{ font-family: monospace; white-space: pre-wrap; line-height: 1.6; font-size: 1.1em; }}
.prompt {{ font-weight: bold; }} .mask {{ color: #bbb; }} .new {{ background: #9f9; }}
</style></head><body>
<h2>{html.escape(title)}</h2>
<button id="play">play</button> <input id="step" type="range" min="0" max="{len(frame_list) - 1}" value="0">
<span id="label"></span>
<div id="canvas"></div>
<script>
const frames = {data};
const step = document.getElementById("step"), canvas = document.getElementById("canvas");
function draw(i) {{
  canvas.replaceChildren(...frames[i].map(([p, s]) => {{
    const e = document.createElement("span"); e.className = s; e.textContent = p; return e; }}));
  document.getElementById("label").textContent = "step " + i + " / " + (frames.length - 1);
}}
step.oninput = () => draw(+step.value);
document.getElementById("play").onclick = () => {{
  let i = 0;
  const t = setInterval(() => {{ step.value = i; draw(i++); if (i >= frames.length) clearInterval(t); }}, 300);
}};
draw(0);
</script></body></html>
"""
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)


def write_gif(path, frame_list, *, width=900, duration_ms=300):
    """An animated GIF of the frames (needs Pillow)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    colours = {"prompt": (0, 0, 0), "mask": (190, 190, 190), "new": (0, 140, 0), "old": (60, 60, 60)}
    line_height, margin = 16, 10
    layouts = []
    for frame in frame_list:
        placed, x, y = [], margin, margin + 2 * line_height
        for piece, state in frame:
            piece = piece.replace("\n", " ")
            w = font.getlength(piece)
            if x + w > width - margin:
                x, y = margin, y + line_height
            placed.append((x, y, piece, colours[state]))
            x += w
        layouts.append((placed, y))
    height = max(y for _, y in layouts) + line_height + margin
    images = []
    for i, (placed, _) in enumerate(layouts):
        image = Image.new("RGB", (width, height), "white")
        draw = ImageDraw.Draw(image)
        draw.text((margin, margin), f"step {i}/{len(frame_list) - 1}", fill=(0, 0, 0), font=font)
        for x, y, piece, colour in placed:
            draw.text((x, y), piece, fill=colour, font=font)
        images.append(image)
    images[0].save(path, save_all=True, append_images=images[1:], duration=duration_ms, loop=0)
