import { ApiError, createApi } from './api.js'

/** sessionStorage: this tab only, gone when it closes; never a cookie (sent by the browser on its own) or a URL (logged, shared). */
const TOKEN_STORAGE_KEY = 'image-upload-service.token'
/** The listing comes in key order (random ids): the month is read whole, then sorted newest first. */
const LIST_PAGE_LIMIT = 1000
const MAX_LISTED = 20_000
const GRID_PAGE_SIZE = 24
const GAUGES = ['storage_bytes', 'class_a_operations', 'class_b_operations']

const $ = (id) => document.getElementById(id)

const state = { api: undefined, scopes: [], images: [], page: 0, selected: undefined }

function showError(message) {
  $('error').textContent = message
  $('error').hidden = message === ''
}

const describe = (error) => (error instanceof ApiError ? `${error.detail} (${error.status} ${error.code})` : String(error))

const formatBytes = (bytes) => {
  const units = ['bytes', 'KB', 'MB', 'GB', 'TB']
  let value = bytes
  let unit = 0
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000
    unit++
  }
  return unit === 0 ? `${bytes} bytes` : `${value.toFixed(1)} ${units[unit]}`
}

const formatCount = (count) => count.toLocaleString('en')

function currentMonth() {
  return new Date().toISOString().slice(0, 7)
}

// ---- signing in and out -------------------------------------------------------------------

async function signIn(token) {
  const api = createApi(token)
  showError('')
  let caller
  try {
    caller = await api.whoami()
  } catch (error) {
    sessionStorage.removeItem(TOKEN_STORAGE_KEY)
    showError(error instanceof ApiError && error.status === 401 ? `That token is not valid: ${describe(error)}` : describe(error))
    return
  }
  sessionStorage.setItem(TOKEN_STORAGE_KEY, token)
  state.api = api
  state.scopes = caller.scopes
  $('who').textContent = `Signed in as ${caller.name ?? 'anyone (authentication is off)'}: ${caller.scopes.join(', ')}`
  $('who').hidden = false
  $('sign-out').hidden = false
  $('sign-in').hidden = true
  $('console').hidden = false
  // Controls the key may not use are not offered at all (the service would answer 403 anyway).
  $('upload').hidden = !state.scopes.includes('upload')
  $('delete').hidden = !state.scopes.includes('delete')
  await Promise.all([loadUsage(), browse()])
}

function signOut() {
  sessionStorage.removeItem(TOKEN_STORAGE_KEY)
  state.api = undefined
  state.images = []
  $('grid').replaceChildren()
  $('console').hidden = true
  $('who').hidden = true
  $('sign-out').hidden = true
  $('sign-in').hidden = false
  showError('')
}

// ---- usage --------------------------------------------------------------------------------

async function loadUsage() {
  let report
  try {
    report = await state.api.usage()
  } catch (error) {
    $('scanned').textContent = `Usage unavailable: ${describe(error)}`
    return
  }
  for (const measure of GAUGES) {
    const gauge = document.querySelector(`.gauge[data-measure="${measure}"]`)
    const percent = report.percentages[measure]
    gauge.querySelector('meter').value = Math.min(percent, 100)
    const used = measure === 'storage_bytes' ? formatBytes(report[measure]) : formatCount(report[measure])
    const limit = measure === 'storage_bytes' ? formatBytes(report.limits[measure]) : formatCount(report.limits[measure])
    gauge.querySelector('.figures').textContent = `${used} of ${limit} (${percent.toFixed(1)} %)`
    gauge.classList.toggle('over', percent >= 80)
  }
  const scanned = report.scanned_at ? new Date(report.scanned_at).toLocaleString() : 'not yet'
  $('scanned').textContent =
    `${formatCount(report.object_count)} objects; storage scanned ${scanned}; operations counted since the start of ${report.month} by this instance. The dashed line is 80 %.`
}

// ---- browsing a context and month -----------------------------------------------------------

function monthPrefix() {
  const [year, month] = $('month').value.split('-')
  return `${$('context').value}/${year}/${month}/`
}

async function browse() {
  const prefix = monthPrefix()
  $('listing').textContent = `Listing ${prefix}…`
  const images = []
  try {
    let cursor
    do {
      const page = await state.api.list(prefix, LIST_PAGE_LIMIT, cursor)
      images.push(...page.items)
      cursor = page.next_cursor ?? undefined
    } while (cursor && images.length < MAX_LISTED)
  } catch (error) {
    $('listing').textContent = `Cannot list ${prefix}: ${describe(error)}`
    state.images = []
    renderGrid()
    return
  }
  images.sort((a, b) => b.last_modified.localeCompare(a.last_modified) || a.key.localeCompare(b.key))
  state.images = images
  state.page = 0
  const more = images.length >= MAX_LISTED ? ` (the first ${MAX_LISTED} in key order)` : ''
  $('listing').textContent = `${images.length} image${images.length === 1 ? '' : 's'} under ${prefix}${more}, newest first.`
  renderGrid()
}

/** Only http(s) URLs become an image source (they come from the service, which builds them from its own base URL). */
const isWebUrl = (url) => /^https?:\/\//i.test(url)

function renderGrid() {
  const pages = Math.max(1, Math.ceil(state.images.length / GRID_PAGE_SIZE))
  state.page = Math.min(state.page, pages - 1)
  const shown = state.images.slice(state.page * GRID_PAGE_SIZE, (state.page + 1) * GRID_PAGE_SIZE)
  $('grid').replaceChildren(
    ...shown.map((item) => {
      const entry = document.createElement('li')
      entry.dataset.key = item.key
      const button = document.createElement('button')
      button.type = 'button'
      button.title = item.key
      const image = document.createElement('img')
      image.loading = 'lazy'
      image.decoding = 'async'
      image.alt = item.key.split('/').pop()
      if (isWebUrl(item.url)) image.src = item.url
      const caption = document.createElement('span')
      caption.className = 'caption'
      caption.textContent = `${new Date(item.last_modified).toLocaleString()} · ${formatBytes(item.size)}`
      button.append(image, caption)
      button.addEventListener('click', () => openDetails(item))
      entry.append(button)
      return entry
    }),
  )
  $('page').textContent = state.images.length === 0 ? '' : `page ${state.page + 1} of ${pages}`
  $('previous').disabled = state.page === 0
  $('next').disabled = state.page >= pages - 1
}

// ---- one image: details and delete ------------------------------------------------------------

function field(name, value) {
  const term = document.createElement('dt')
  term.textContent = name
  const definition = document.createElement('dd')
  definition.textContent = value
  return [term, definition]
}

async function openDetails(item) {
  state.selected = item
  $('details-title').textContent = item.key.split('/').pop()
  $('details-image').alt = item.key
  if (isWebUrl(item.url)) $('details-image').src = item.url
  $('details-fields').replaceChildren(...field('Key', item.key))
  $('details-error').hidden = true
  $('details').showModal()
  try {
    const object = await state.api.metadata(item.key)
    const meta = object.metadata
    const dimensions = meta.width && meta.height ? `${meta.width} × ${meta.height} px` : '—'
    $('details-fields').replaceChildren(
      ...field('Character name', meta.character_name ?? '—'),
      ...field('Uploader', meta.uploader_id ?? meta.uploader ?? '—'),
      ...field('Size', `${formatBytes(object.size)} (${formatCount(object.size)} bytes)`),
      ...field('Dimensions', dimensions),
      ...field('SHA-256', meta.sha256 ?? '— (not recorded for multipart uploads)'),
      ...field('Uploaded at', meta.uploaded_at ?? object.last_modified),
      ...field('Type', object.content_type),
      ...field('Filename', meta.filename ?? '—'),
      ...field('Key', object.key),
    )
  } catch (error) {
    $('details-error').textContent = describe(error)
    $('details-error').hidden = false
  }
}

async function deleteSelected() {
  const { key } = state.selected
  $('confirm-delete').close()
  try {
    await state.api.remove(key)
  } catch (error) {
    $('details-error').textContent = `Not deleted: ${describe(error)}`
    $('details-error').hidden = false
    return
  }
  $('details').close()
  state.images = state.images.filter((image) => image.key !== key)
  $('listing').textContent = `Deleted ${key}.`
  renderGrid()
  await loadUsage()
}

// ---- upload ------------------------------------------------------------------------------------

async function upload(file) {
  if (!file) return
  const status = $('upload-status')
  status.classList.remove('error')
  status.textContent = `Uploading ${file.name}…`
  let stored
  try {
    stored = await state.api.upload(file, $('context').value)
  } catch (error) {
    status.classList.add('error')
    status.textContent = `Refused: ${describe(error)}`
    return
  } finally {
    $('file').value = ''
  }
  status.textContent = `Stored as ${stored.key} (${formatBytes(stored.size)}, SHA-256 ${stored.sha256}).`
  // The key says where it went: its context's current month.
  $('month').value = currentMonth()
  await Promise.all([browse(), loadUsage()])
}

// ---- wiring ------------------------------------------------------------------------------------

function wire() {
  $('month').value = currentMonth()
  $('sign-in').addEventListener('submit', (event) => {
    event.preventDefault()
    const token = $('token').value.trim()
    $('token').value = ''
    void signIn(token)
  })
  $('sign-out').addEventListener('click', signOut)
  $('browse').addEventListener('submit', (event) => {
    event.preventDefault()
    void browse()
  })
  $('previous').addEventListener('click', () => {
    state.page--
    renderGrid()
  })
  $('next').addEventListener('click', () => {
    state.page++
    renderGrid()
  })
  $('close-details').addEventListener('click', () => $('details').close())
  $('delete').addEventListener('click', () => {
    $('confirm-key').textContent = state.selected.key
    $('confirm-delete').showModal()
  })
  $('confirm-no').addEventListener('click', () => $('confirm-delete').close())
  $('confirm-yes').addEventListener('click', () => void deleteSelected())
  $('file').addEventListener('change', () => void upload($('file').files[0]))
  const zone = $('drop-zone')
  zone.addEventListener('dragover', (event) => {
    event.preventDefault()
    zone.classList.add('over')
  })
  zone.addEventListener('dragleave', () => zone.classList.remove('over'))
  zone.addEventListener('drop', (event) => {
    event.preventDefault()
    zone.classList.remove('over')
    void upload(event.dataTransfer.files[0])
  })

  const saved = sessionStorage.getItem(TOKEN_STORAGE_KEY)
  if (saved) void signIn(saved)
}

wire()
