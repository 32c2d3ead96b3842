// Example photos (gr.HTML js_on_load): a tap sends the example's index to Python.
element.addEventListener('click', (ev) => {
  const el = ev.target.closest('[data-example]');
  if (el && element.contains(el)) trigger('click', {index: Number(el.dataset.example)});
});
