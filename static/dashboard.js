// kavach-stream admin dashboard: the live feed (rows inserted in batches, pause and resume, a
// bounded number of rows, resuming after the last row shown), the type filters kept in the URL,
// and the event detail dialog. Loaded with `defer` after htmx and its SSE extension. There is no
// inline script or style anywhere, so the pages run under a strict Content-Security-Policy.
(function () {
  'use strict';

  // How often a screen reader hears "N new events", at most.
  const ANNOUNCE_EVERY_MS = 4000;

  function goToSignin() {
    const back = location.pathname + location.search;
    location.assign('/admin/signin?next=' + encodeURIComponent(back));
  }

  // A 401 from a fragment means the session ended: sign in again, then come back.
  document.addEventListener('htmx:responseError', function (event) {
    const xhr = event.detail && event.detail.xhr;
    if (xhr && xhr.status === 401) {
      goToSignin();
    }
  });

  // ---- Type filters -------------------------------------------------------------------------

  const form = document.getElementById('filters');

  function typeBoxes() {
    if (!form) {
      return [];
    }
    return Array.from(form.querySelectorAll('input[type="checkbox"][name="types"]'));
  }

  // null selects every type (the URL has no `types`), [] selects none.
  function selectedTypes() {
    const boxes = typeBoxes();
    const checked = boxes.filter(function (box) { return box.checked; });
    if (checked.length === boxes.length) {
      return null;
    }
    return checked.map(function (box) { return box.value; });
  }

  function withTypes(url, selection) {
    url.searchParams.delete('types');
    if (selection !== null) {
      url.searchParams.set('types', selection.join(','));
    }
    return url;
  }

  function syncFamilyToggles() {
    if (!form) {
      return;
    }
    form.querySelectorAll('.family-toggle').forEach(function (toggle) {
      const members = typeBoxes().filter(function (box) {
        return box.dataset.family === toggle.dataset.family;
      });
      const checked = members.filter(function (box) { return box.checked; }).length;
      toggle.checked = checked === members.length;
      toggle.indeterminate = checked > 0 && checked < members.length;
    });
  }

  // The filter lives in the URL (shareable, survives a reload) and in the navigation links.
  function rememberFilter(selection) {
    const here = withTypes(new URL(location.href), selection);
    history.replaceState(null, '', here.pathname + here.search);
    document.querySelectorAll('a[data-keeps-filter]').forEach(function (link) {
      const target = withTypes(new URL(link.dataset.path, location.href), selection);
      link.setAttribute('href', target.pathname + target.search);
    });
  }

  // History: load the page for the form's filters and window.
  function showHistory() {
    const target = withTypes(new URL(form.action), selectedTypes());
    ['from', 'to'].forEach(function (name) {
      const input = form.elements.namedItem(name);
      if (input && input.value) {
        target.searchParams.set(name, input.value);
      }
    });
    location.assign(target.pathname + target.search);
  }

  if (form) {
    form.addEventListener('change', function (event) {
      const box = event.target;
      if (box.type !== 'checkbox') {
        return;
      }
      if (box.classList.contains('family-toggle')) {
        typeBoxes().forEach(function (member) {
          if (member.dataset.family === box.dataset.family) {
            member.checked = box.checked;
          }
        });
      }
      syncFamilyToggles();
      // The live feed follows each change at once; history waits for "Apply filters".
      if (form.dataset.view === 'live' && live) {
        live.refilter(selectedTypes());
      }
    });

    form.addEventListener('submit', function (event) {
      event.preventDefault();
      if (form.dataset.view === 'live' && live) {
        live.refilter(selectedTypes());
      } else {
        showHistory();
      }
    });

    syncFamilyToggles();

    // In a narrow window the filters start folded, so the events come first.
    const details = document.getElementById('filters-details');
    if (details && window.matchMedia('(max-width: 800px)').matches) {
      details.open = false;
    }
  }

  // ---- Live feed ----------------------------------------------------------------------------

  const live = (function () {
    const rows = document.getElementById('live-rows');
    let connector = document.getElementById('live-source');
    if (!rows || !connector || !window.htmx) {
      return null;
    }
    const maxRows = Number(rows.dataset.maxRows) || 500;
    const status = document.getElementById('feed-status');
    const announcer = document.getElementById('feed-announcer');
    const pauseButton = document.getElementById('pause');

    let source = null;
    // The cursor of the newest row received; a new connection replays what follows it.
    let lastCursor = connector.dataset.after || '';
    let paused = false;
    let pending = [];
    let held = [];
    let heldDropped = 0;
    let flushScheduled = false;
    let unannounced = 0;
    let announceTimer = null;

    function setStatus(state, text) {
      status.dataset.state = state;
      status.textContent = text;
    }

    function pausedText() {
      const waiting = held.length + heldDropped;
      return 'Paused: ' + waiting + (waiting === 1 ? ' new event' : ' new events') + ' waiting';
    }

    // Every connection the SSE extension opens goes through here, including its own reconnects
    // after a refusal: each resumes after the newest row this page has received.
    htmx.createEventSource = function (url) {
      const target = new URL(url, location.href);
      if (lastCursor) {
        target.searchParams.set('after', lastCursor);
      }
      const created = new EventSource(target.pathname + target.search, { withCredentials: true });
      watch(created);
      source = created;
      return created;
    };

    function watch(created) {
      created.addEventListener('connected', function () {
        if (created === source) {
          setStatus(paused ? 'paused' : 'live', paused ? pausedText() : 'Live');
        }
      });
      created.addEventListener('gap', function () {
        if (created === source) {
          pending.push(noticeRow('Some events could not be replayed (pruned or unknown cursor).'));
          schedule();
        }
      });
      created.addEventListener('error', function (event) {
        if (created !== source) {
          return;
        }
        if (event instanceof MessageEvent) {
          setStatus('error', 'The server ended the feed; it will reconnect');
        } else if (created.readyState === EventSource.CONNECTING) {
          setStatus('reconnecting', 'Reconnecting…');
        } else {
          setStatus('reconnecting', 'Disconnected; retrying…');
          checkSession();
        }
      });
    }

    function checkSession() {
      fetch('/admin/session', { credentials: 'same-origin', cache: 'no-store' })
        .then(function (response) {
          if (response.status === 401) {
            goToSignin();
          }
        })
        .catch(function () { /* The server is down; the stream keeps retrying. */ });
    }

    document.addEventListener('htmx:sseBeforeMessage', function (event) {
      if (event.target !== connector) {
        return;
      }
      // Rows are inserted in batches below instead of one htmx swap each.
      event.preventDefault();
      receive(event.detail);
    });

    function receive(message) {
      if (message.lastEventId) {
        lastCursor = message.lastEventId;
      }
      if (paused) {
        held.push(message.data);
        if (held.length > maxRows) {
          held.shift();
          heldDropped += 1;
        }
        setStatus('paused', pausedText());
        return;
      }
      pending.push(message.data);
      // Rows beyond the limit would be trimmed as soon as they are inserted.
      if (pending.length > maxRows) {
        pending.shift();
      }
      schedule();
    }

    function schedule() {
      if (!flushScheduled) {
        flushScheduled = true;
        requestAnimationFrame(flush);
      }
    }

    function flush() {
      flushScheduled = false;
      if (pending.length === 0) {
        return;
      }
      const added = pending.length;
      rows.insertAdjacentHTML('afterbegin', pending.reverse().join(''));
      pending = [];
      while (rows.rows.length > maxRows) {
        rows.deleteRow(-1);
      }
      announce(added);
    }

    function announce(count) {
      unannounced += count;
      if (announceTimer !== null) {
        return;
      }
      announceTimer = setTimeout(function () {
        announcer.textContent = unannounced === 1 ? '1 new event' : unannounced + ' new events';
        unannounced = 0;
        announceTimer = null;
      }, ANNOUNCE_EVERY_MS);
    }

    function noticeRow(text) {
      const row = document.createElement('tr');
      row.className = 'notice';
      const cell = row.insertCell();
      cell.colSpan = 5;
      cell.textContent = text;
      return row.outerHTML;
    }

    pauseButton.addEventListener('click', function () {
      paused = !paused;
      pauseButton.setAttribute('aria-pressed', String(paused));
      pauseButton.textContent = paused ? 'Resume' : 'Pause';
      if (paused) {
        setStatus('paused', pausedText());
        return;
      }
      if (heldDropped > 0) {
        pending.push(noticeRow(heldDropped + ' events arrived while paused and are not shown here; see History.'));
      }
      pending = pending.concat(held);
      held = [];
      heldDropped = 0;
      setStatus('live', 'Live');
      schedule();
    });

    // A new type selection: hide rows of unselected types and reconnect with the new filter,
    // resuming after the newest row received, so nothing is missed or shown twice.
    function refilter(selection) {
      rememberFilter(selection);
      const selected = function (type) {
        return selection === null || selection.indexOf(type) >= 0;
      };
      Array.from(rows.rows).forEach(function (row) {
        if (row.dataset.type) {
          row.hidden = !selected(row.dataset.type);
        }
      });
      held = held.filter(function (html) {
        const type = /data-type="([^"]*)"/.exec(html);
        return !type || selected(type[1]);
      });
      if (source) {
        source.close();
        source = null;
      }

      const fresh = document.createElement('div');
      fresh.id = 'live-source';
      fresh.hidden = true;
      fresh.setAttribute('hx-ext', 'sse');
      if (selection === null || selection.length > 0) {
        const url = withTypes(new URL('/admin/stream', location.href), selection);
        fresh.setAttribute('sse-connect', url.pathname + url.search);
        fresh.setAttribute('sse-swap', 'row');
        setStatus('connecting', 'Connecting…');
      } else {
        setStatus('idle', 'No event type selected');
      }
      connector.replaceWith(fresh);
      connector = fresh;
      htmx.process(fresh);
    }

    return { refilter: refilter };
  })();

  // ---- Event detail -------------------------------------------------------------------------

  const dialog = document.getElementById('detail');
  const detailBody = document.getElementById('detail-body');
  let returnFocusTo = null;

  function openDetail(link) {
    const path = new URL(link.href).pathname.replace('/admin/events/', '/admin/fragments/events/');
    returnFocusTo = link;
    htmx.ajax('GET', path, { target: detailBody, swap: 'innerHTML' }).then(function () {
      if (!dialog.open) {
        dialog.showModal();
      }
    });
  }

  if (dialog && detailBody && window.htmx && typeof dialog.showModal === 'function') {
    // A click anywhere on a row opens its detail; modified clicks keep the link's own behaviour.
    document.addEventListener('click', function (event) {
      const row = event.target.closest('tr.event');
      const link = row && row.querySelector('a.event-link');
      const otherLink = event.target.closest('a') && event.target.closest('a') !== link;
      const modified = event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0;
      const selecting = String(window.getSelection()) !== '';
      if (!link || otherLink || modified || selecting) {
        return;
      }
      event.preventDefault();
      openDetail(link);
    });

    document.addEventListener('htmx:responseError', function (event) {
      if (event.detail.target === detailBody) {
        detailBody.textContent = 'This event could not be loaded (' + event.detail.xhr.status + ').';
      }
    });

    dialog.addEventListener('close', function () {
      if (returnFocusTo) {
        returnFocusTo.focus();
        returnFocusTo = null;
      }
    });
  }

  // ---- History: keep keyboard focus where the older rows begin ------------------------------

  let rowBeforeOlder = null;

  document.addEventListener('htmx:beforeSwap', function (event) {
    const target = event.detail.target;
    if (target && target.id === 'load-older') {
      rowBeforeOlder = target.previousElementSibling;
    }
  });

  document.addEventListener('htmx:afterSwap', function () {
    if (!rowBeforeOlder) {
      return;
    }
    const first = rowBeforeOlder.nextElementSibling;
    const link = first && first.querySelector('a');
    if (link) {
      link.focus();
    }
    rowBeforeOlder = null;
  });
})();
