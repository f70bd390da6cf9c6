import t from 'tap'
import { buildTestApp } from './helpers/app.js'
import { png } from './helpers/images.js'
import { multipartBody } from './helpers/multipart.js'

t.test('smoke', async (t) => {
  const { app } = await buildTestApp(t)
  const res = await app.inject({ method: 'POST', url: '/v1/images', ...multipartBody([{ name: 'file', filename: 'a.png', data: png() }]) })
  t.equal(res.statusCode, 201)
})
