// Item chips over the photo (gr.HTML js_on_load): a tap on a numbered box or chip sends one
// 'click' event with the item's index; Python re-validates it and searches that item.
element.addEventListener('click', (ev) => {
  const el = ev.target.closest('[data-object]');
  if (!el || !element.contains(el)) return;
  ev.preventDefault();
  element.querySelectorAll('[data-object]').forEach((b) => b.classList.toggle('vs-busy', b === el));
  trigger('click', {index: Number(el.dataset.object)});
});
