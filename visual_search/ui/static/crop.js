// The cropper (gr.HTML js_on_load): a box over the photo, moved and resized with pointer events
// (mouse and touch); 'Use this crop' sends the box as fractions of the photo and Python crops.
const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));
const MIN = 0.05;
let drag = null;
const place = (rect, b) => {
  Object.assign(rect.dataset, {x0: b.x0, y0: b.y0, x1: b.x1, y1: b.y1});
  rect.style.left = (b.x0 * 100) + '%'; rect.style.top = (b.y0 * 100) + '%';
  rect.style.width = ((b.x1 - b.x0) * 100) + '%'; rect.style.height = ((b.y1 - b.y0) * 100) + '%';
};
const boxOf = (rect) => ({x0: +rect.dataset.x0, y0: +rect.dataset.y0, x1: +rect.dataset.x1, y1: +rect.dataset.y1});
element.addEventListener('pointerdown', (ev) => {
  const stage = element.querySelector('.vs-crop-stage');
  const rect = element.querySelector('.vs-crop-rect');
  if (!stage || !rect || !stage.contains(ev.target)) return;
  const r = stage.getBoundingClientRect();
  const handle = ev.target.closest('[data-h]');
  const mode = handle ? handle.dataset.h : (ev.target.closest('.vs-crop-rect') ? 'move' : 'new');
  drag = {mode, r, box: boxOf(rect), start: {x: clamp((ev.clientX - r.left) / r.width, 0, 1),
                                             y: clamp((ev.clientY - r.top) / r.height, 0, 1)}};
  stage.setPointerCapture(ev.pointerId);
  ev.preventDefault();
});
element.addEventListener('pointermove', (ev) => {
  if (!drag) return;
  const rect = element.querySelector('.vs-crop-rect');
  const {mode, r, start} = drag;
  const x = clamp((ev.clientX - r.left) / r.width, 0, 1), y = clamp((ev.clientY - r.top) / r.height, 0, 1);
  let {x0, y0, x1, y1} = drag.box;
  if (mode === 'move') {
    const w = x1 - x0, h = y1 - y0;
    x0 = clamp(x0 + x - start.x, 0, 1 - w); y0 = clamp(y0 + y - start.y, 0, 1 - h); x1 = x0 + w; y1 = y0 + h;
  } else if (mode === 'new') {
    x0 = Math.min(start.x, x); x1 = Math.max(start.x, x); y0 = Math.min(start.y, y); y1 = Math.max(start.y, y);
  } else {
    if (mode.includes('w')) x0 = clamp(x, 0, x1 - MIN);
    if (mode.includes('e')) x1 = clamp(x, x0 + MIN, 1);
    if (mode.includes('n')) y0 = clamp(y, 0, y1 - MIN);
    if (mode.includes('s')) y1 = clamp(y, y0 + MIN, 1);
  }
  place(rect, {x0, y0, x1, y1});
});
const stop = () => { drag = null; };
element.addEventListener('pointerup', stop);
element.addEventListener('pointercancel', stop);
element.addEventListener('click', (ev) => {
  const button = ev.target.closest('[data-crop]');
  const rect = element.querySelector('.vs-crop-rect');
  if (!button || !rect) return;
  trigger('click', Object.assign({action: button.dataset.crop}, boxOf(rect)));
});
