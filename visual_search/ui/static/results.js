// Results panel (gr.HTML js_on_load): any element with data-action sends one 'click' event to
// Python with the action, product id and rank; the Python side re-validates everything.
element.addEventListener('click', (ev) => {
  const el = ev.target.closest('[data-action]');
  if (!el || !element.contains(el)) return;
  ev.preventDefault();
  trigger('click', {action: el.dataset.action || '', product_id: el.dataset.pid || '',
                    rank: Number(el.dataset.rank || 0)});
});
